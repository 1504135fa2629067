//! What the measurements ran on.

use serde::{Deserialize, Serialize};

/// The SIMD extensions a record names when the CPU has them (`/proc/cpuinfo` flag names): those
/// the linked kernels choose between at run time (`gemm` and crates/model: AVX2 with FMA, or
/// AVX-512), and those that ONNX Runtime's int8 and the bf16 paths use (VNNI, AVX-512 BF16, AMX).
/// Two CPUs with one model name can differ here (one cloud "AMD EPYC" has AVX-512, another not),
/// and a latency means nothing without them.
pub const SIMD_FLAGS: [&str; 11] = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx_vnni",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
];

/// The machine and software a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`), or `unknown`.
    pub cpu_model: String,
    /// The CPU's SIMD extensions among [`SIMD_FLAGS`], in that order (empty off Linux, and in
    /// records written before they were kept).
    #[serde(default)]
    pub simd: Vec<String>,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Threads candle's CPU kernels use (`RAYON_NUM_THREADS` or all CPUs).
    pub threads: usize,
    /// candle-core version linked.
    pub candle_version: String,
    /// unetlab version.
    pub unetlab_version: String,
    /// Operating system and architecture.
    pub os: String,
}

impl Machine {
    /// Reads the current machine.
    pub fn current() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu_model, simd) = parse_cpuinfo(&cpuinfo);
        Machine {
            cpu_model,
            simd,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: candle_core::utils::get_num_threads(),
            candle_version: env!("UNETLAB_CANDLE_VERSION").into(),
            unetlab_version: env!("CARGO_PKG_VERSION").into(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }

    /// The CPU as reports name it: the model, then its SIMD extensions in brackets, e.g.
    /// `AMD EPYC [avx2 fma f16c]`; the model alone for records that did not keep them.
    pub fn cpu(&self) -> String {
        if self.simd.is_empty() {
            self.cpu_model.clone()
        } else {
            format!("{} [{}]", self.cpu_model, self.simd.join(" "))
        }
    }

    /// [`Machine::cpu`] of a machine recorded as JSON (a run's `machine` field); `?` if it is not
    /// one.
    pub fn cpu_of_json(machine: &serde_json::Value) -> String {
        serde_json::from_value::<Machine>(machine.clone()).map_or_else(|_| "?".into(), |m| m.cpu())
    }
}

/// The first processor's model name (`unknown` if none) and its flags among [`SIMD_FLAGS`].
fn parse_cpuinfo(cpuinfo: &str) -> (String, Vec<String>) {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim())
    };
    let model = field("model name").unwrap_or("unknown").to_string();
    let flags: Vec<&str> = field("flags").unwrap_or("").split_whitespace().collect();
    let simd = SIMD_FLAGS
        .iter()
        .filter(|f| flags.contains(f))
        .map(|f| f.to_string())
        .collect();
    (model, simd)
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_gives_the_model_and_the_simd_extensions_in_a_fixed_order() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                       flags\t\t: fpu sse2 avx512f fma avx2 avx512vl sha_ni\n\nprocessor\t: 1\n\
                       model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n";
        let (model, simd) = parse_cpuinfo(cpuinfo);
        assert_eq!(model, "AMD EPYC");
        assert_eq!(simd, ["avx2", "fma", "avx512f", "avx512vl"]);
        assert_eq!(parse_cpuinfo(""), ("unknown".to_string(), vec![]));
    }

    #[test]
    fn a_record_without_simd_extensions_reads_and_names_its_model_alone() {
        let mut json = serde_json::to_value(Machine::current()).unwrap();
        json.as_object_mut().unwrap().remove("simd");
        json["cpu_model"] = "AMD EPYC".into();
        assert_eq!(Machine::cpu_of_json(&json), "AMD EPYC");
        json["simd"] = serde_json::json!(["avx2", "fma"]);
        assert_eq!(Machine::cpu_of_json(&json), "AMD EPYC [avx2 fma]");
        assert_eq!(Machine::cpu_of_json(&serde_json::json!({"cpu": 1})), "?");
    }
}

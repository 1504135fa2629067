//! `cargo xtask fuzz`: seeded, structure-aware mutation fuzzing of every reader of user files.
//!
//! Each reader (see [`readers::READERS`]) starts from valid seed inputs made by the project's own
//! writers and derives case `i` from them with a ChaCha8 stream keyed by (seed, reader, `i`), so a
//! case is reproducible from its number. Cases run in a worker process (this binary with
//! `--worker`) that writes each input to disk and runs the real reader on it inside
//! `catch_unwind`; the supervising process counts outcomes per reader, kills the worker when one
//! case runs past `--hang-seconds` (a hang), and restarts it after a crash (an abort, a stack
//! overflow, an allocation past the worker's memory limit). Every finding's input is kept under
//! `target/fuzz/findings/<reader>/`; `--replay DIR` runs saved inputs (`DIR/<reader>/<case>/`),
//! as the regression test does with `xtask/tests/fuzz-regressions/`.

mod case;
mod mutate;
mod readers;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use case::CaseDir;
use readers::{reader, Reader, READERS};

/// Memory a worker may map (address space); an allocation past it aborts the worker, which
/// counts as a crash of the case instead of exhausting the machine.
const WORKER_MEMORY: u64 = 8 << 30;

/// How long a worker may take to build its seed inputs.
const SEED_TIMEOUT: Duration = Duration::from_secs(600);

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Cases per reader.
    #[arg(long, default_value_t = 1000)]
    pub cases: u64,
    /// Fuzz only this reader (repeatable): config, diffusers-config, study, search, weights,
    /// checkpoint, bundle, parquet, image-folder, tokenizer.
    #[arg(long = "reader")]
    pub readers: Vec<String>,
    /// Seed of the mutations: the same seed gives the same cases.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds one case may run before it counts as a hang.
    #[arg(long, default_value_t = 20)]
    pub hang_seconds: u64,
    /// Replay saved inputs, `DIR/<reader>/<case>/`, instead of generating cases.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where cases, seeds and findings are written (default: target/fuzz).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Run cases of this reader in this process for a supervising `cargo xtask fuzz`.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    /// First case number: `--from I --cases I+1` regenerates and reruns case I alone.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
}

/// A panic, hang or crash: the case and what happened.
#[derive(Debug, Serialize)]
struct Finding {
    /// Case number (or the replayed case's name).
    case: String,
    /// The panic message, or how the worker ended.
    message: String,
    /// Where the input was saved.
    input: PathBuf,
}

/// One reader's results.
#[derive(Debug, Default, Serialize)]
struct ReaderReport {
    reader: String,
    reads: String,
    cases: u64,
    /// Inputs read without error, by remark (`read`, `read, inputs skipped`).
    read: BTreeMap<String, u64>,
    /// Named errors by kind (the error type's variant path).
    errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    error_examples: BTreeMap<String, String>,
    panics: Vec<Finding>,
    hangs: Vec<Finding>,
    crashes: Vec<Finding>,
    /// Replayed cases by name: `read` or `error <kind>` (with `--replay`).
    replayed: BTreeMap<String, String>,
    wall_s: f64,
}

impl ReaderReport {
    fn findings(&self) -> usize {
        self.panics.len() + self.hangs.len() + self.crashes.len()
    }
}

/// The JSON summary.
#[derive(Debug, Serialize)]
struct Summary {
    seed: u64,
    hang_seconds: u64,
    readers: Vec<ReaderReport>,
}

/// Runs `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| crate::tools::target_dir(&crate::docs::workspace()).join("fuzz"));
    if let Some(name) = &args.worker {
        let reader = reader(name).with_context(|| format!("no reader {name}"))?;
        return worker(reader, args, &work);
    }
    let chosen: Vec<&Reader> = if args.readers.is_empty() {
        READERS.iter().collect()
    } else {
        args.readers
            .iter()
            .map(|name| {
                reader(name).with_context(|| {
                    let names: Vec<&str> = READERS.iter().map(|r| r.name).collect();
                    format!("no reader {name} (readers: {})", names.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let mut reports = Vec::new();
    for reader in chosen {
        let names = match &args.replay {
            Some(dir) => {
                let names = replay_names(&dir.join(reader.name))?;
                if names.is_empty() {
                    continue;
                }
                Some(names)
            }
            None => None,
        };
        reports.push(supervise(reader, args, &work, names.as_deref())?);
    }
    let findings: usize = reports.iter().map(ReaderReport::findings).sum();
    let summary = Summary {
        seed: args.seed,
        hang_seconds: args.hang_seconds,
        readers: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if findings > 0 {
        bail!(
            "{findings} finding(s): inputs saved under {}/findings",
            work.display()
        );
    }
    Ok(())
}

fn print_summary(summary: &Summary) {
    println!(
        "{:<17} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>8}",
        "reader", "cases", "read", "errors", "panics", "hangs", "crashes", "wall (s)"
    );
    for r in &summary.readers {
        println!(
            "{:<17} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>8.1}",
            r.reader,
            r.cases,
            r.read.values().sum::<u64>(),
            r.errors.values().sum::<u64>(),
            r.panics.len(),
            r.hangs.len(),
            r.crashes.len(),
            r.wall_s
        );
        let kinds: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("    error kinds: {}", kinds.join(", "));
        for f in r.panics.iter().chain(&r.hangs).chain(&r.crashes) {
            println!("    case {}: {} ({})", f.case, f.message, f.input.display());
        }
    }
}

/// The saved cases of one reader's replay directory, sorted.
fn replay_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The random stream of case `index` of `reader`.
fn case_rng(seed: u64, reader: &str, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    let name = reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    key[16..24].copy_from_slice(&name.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// One line of a message: tabs and newlines as spaces, at most 400 characters.
fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect()
}

/// The message and place of the last panic in this process.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// The worker: builds the reader's seeds, then runs cases `--from`.. and reports each on stdout.
fn worker(reader: &Reader, args: &FuzzArgs, work: &Path) -> Result<()> {
    limit_memory();
    std::panic::set_hook(Box::new(|info| {
        let message = one_line(&info.to_string());
        eprintln!("{message}");
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = message;
    }));
    let scratch = work.join("seeds").join(reader.name);
    std::fs::create_dir_all(&scratch)?;
    let target = (reader.build)(&scratch)
        .with_context(|| format!("building the seed inputs of {}", reader.name))?;
    let findings = work.join("findings").join(reader.name);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let replayed = match &args.replay {
        Some(dir) => Some((dir.join(reader.name), replay_names(&dir.join(reader.name))?)),
        None => None,
    };
    let mut case = CaseDir::new(&work.join("cases").join(reader.name))?;
    let total = replayed
        .as_ref()
        .map_or(args.cases, |(_, n)| n.len() as u64);
    for index in args.from..total {
        let dir = match &replayed {
            Some((root, names)) => root.join(&names[index as usize]),
            None => {
                let files = target.generate(&mut case_rng(args.seed, reader.name, index));
                case.write(files)?;
                case.path().to_path_buf()
            }
        };
        let line = match std::panic::catch_unwind(AssertUnwindSafe(|| target.read(&dir))) {
            Ok(Ok(remark)) => format!("read\t{}", remark.unwrap_or_else(|| "read".into())),
            Ok(Err(failure)) => format!(
                "error\t{}\t{}",
                one_line(&failure.kind),
                one_line(&failure.message)
            ),
            Err(_) => {
                let saved = match replayed {
                    Some(_) => dir.clone(),
                    None => {
                        let saved = findings.join(format!("panic-{}-{index}", args.seed));
                        case::save(&dir, &saved)?;
                        saved
                    }
                };
                let message = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
                format!("panic\t{message}\t{}", saved.display())
            }
        };
        writeln!(stdout, "{index}\t{line}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Caps the worker's address space at [`WORKER_MEMORY`].
fn limit_memory() {
    let limit = libc::rlimit {
        rlim_cur: WORKER_MEMORY,
        rlim_max: WORKER_MEMORY,
    };
    // SAFETY: setrlimit reads a valid rlimit; failure only leaves the limit unset.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
}

/// What the supervisor hears from a worker.
enum Heard {
    Line(String),
    End,
}

/// Runs one reader's cases in worker processes, restarting after a hang or a crash.
fn supervise(
    reader: &Reader,
    args: &FuzzArgs,
    work: &Path,
    replay: Option<&[String]>,
) -> Result<ReaderReport> {
    let started = Instant::now();
    let (first, total) = match replay {
        Some(names) => (0, names.len() as u64),
        None => (args.from.min(args.cases), args.cases),
    };
    let bar = ProgressBar::new(total - first);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>17} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(reader.name);
    let mut report = ReaderReport {
        reader: reader.name.into(),
        reads: reader.reads.into(),
        ..Default::default()
    };
    let case_name = |index: u64| match replay {
        Some(names) => names[index as usize].clone(),
        None => index.to_string(),
    };
    let case_input = |index: u64| match (replay, &args.replay) {
        (Some(names), Some(dir)) => dir.join(reader.name).join(&names[index as usize]),
        _ => work.join("cases").join(reader.name),
    };
    let mut next = first;
    while next < total {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["fuzz", "--worker", reader.name])
            .args(["--from", &next.to_string()])
            .args(["--cases", &args.cases.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .arg("--work")
            .arg(work)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &args.replay {
            command.arg("--replay").arg(dir);
        }
        let mut child = command.spawn().context("starting a fuzz worker")?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(Heard::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Heard::End);
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.push_back(line);
                if tail.len() > 8 {
                    tail.pop_front();
                }
            }
        });
        let tail_text = || {
            let tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
            let last: Vec<String> = tail.iter().rev().take(2).rev().cloned().collect();
            one_line(&last.join(" | "))
        };
        match rx.recv_timeout(SEED_TIMEOUT) {
            Ok(Heard::Line(line)) if line == "ready" => {}
            _ => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!(
                    "the {} worker did not start ({status}): {}",
                    reader.name,
                    tail_text()
                );
            }
        }
        let hang = Duration::from_secs(args.hang_seconds);
        loop {
            match rx.recv_timeout(hang) {
                Ok(Heard::Line(line)) => {
                    let Some(index) = record(&mut report, &line, &case_name, replay.is_some())
                    else {
                        continue;
                    };
                    next = index + 1;
                    bar.inc(1);
                }
                Ok(Heard::End) | Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    if next < total {
                        let input = save_finding(
                            work,
                            reader,
                            "crash",
                            args.seed,
                            next,
                            &case_input(next),
                        )?;
                        report.crashes.push(Finding {
                            case: case_name(next),
                            message: format!("worker ended ({status}): {}", tail_text()),
                            input,
                        });
                        next += 1;
                        bar.inc(1);
                    }
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    child.wait()?;
                    let input =
                        save_finding(work, reader, "hang", args.seed, next, &case_input(next))?;
                    report.hangs.push(Finding {
                        case: case_name(next),
                        message: format!("no result after {} s", args.hang_seconds),
                        input,
                    });
                    next += 1;
                    bar.inc(1);
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    report.cases = total - first;
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Saves the input of a hang or crash (a generated case) under `findings/`; a replayed case is
/// already saved.
fn save_finding(
    work: &Path,
    reader: &Reader,
    what: &str,
    seed: u64,
    index: u64,
    input: &Path,
) -> Result<PathBuf> {
    if !input.starts_with(work) {
        return Ok(input.to_path_buf());
    }
    let saved = work
        .join("findings")
        .join(reader.name)
        .join(format!("{what}-{seed}-{index}"));
    case::save(input, &saved)?;
    Ok(saved)
}

/// Counts one worker line into `report`; returns its case number.
fn record(
    report: &mut ReaderReport,
    line: &str,
    case_name: &dyn Fn(u64) -> String,
    replaying: bool,
) -> Option<u64> {
    let mut fields = line.split('\t');
    let index: u64 = fields.next()?.parse().ok()?;
    let name = case_name(index);
    let mut outcome = |what: String| {
        if replaying {
            report.replayed.insert(name.clone(), what);
        }
    };
    match fields.next()? {
        "read" => {
            let remark = fields.next().unwrap_or("read").to_string();
            outcome(remark.clone());
            *report.read.entry(remark).or_default() += 1;
        }
        "error" => {
            let kind = fields.next().unwrap_or("").to_string();
            let message = fields.next().unwrap_or("").to_string();
            outcome(format!("error {kind}"));
            report.error_examples.entry(kind.clone()).or_insert(message);
            *report.errors.entry(kind).or_default() += 1;
        }
        "panic" => {
            let message = fields.next().unwrap_or("").to_string();
            let input = PathBuf::from(fields.next().unwrap_or(""));
            outcome("panic".into());
            report.panics.push(Finding {
                case: name,
                message,
                input,
            });
        }
        _ => return None,
    }
    Some(index)
}

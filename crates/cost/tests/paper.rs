//! The MobileDiffusion reconstructions against the paper's Table 1, and the FLOP convention.

use unetlab_cost::{count, Conditions, CostReport};
use unetlab_spec::paper::{row_for, GFLOPS_LATENT_SIZE};
use unetlab_spec::Config;

fn at(preset: &str, latent_size: usize) -> CostReport {
    let spec = Config::load(preset).unwrap().spec;
    count(
        &spec,
        Conditions {
            batch: 1,
            latent_size,
            tokens: 77,
        },
    )
    .unwrap()
}

#[test]
fn total_macs_at_64_is_the_convention_closest_to_the_papers_sd15() {
    let paper = row_for("sd15").unwrap().gflops * 1e9;
    let r64 = at("sd15", 64);
    let candidates = [
        ("MACs conv+linear+attention @64", r64.macs.total() as f64),
        (
            "MACs conv+linear @64",
            (r64.macs.conv + r64.macs.linear) as f64,
        ),
        ("FLOPs @64", r64.flops() as f64),
        (
            "FLOPs conv+linear @64",
            2.0 * (r64.macs.conv + r64.macs.linear) as f64,
        ),
        ("MACs @32", at("sd15", 32).macs.total() as f64),
        ("MACs @96", at("sd15", 96).macs.total() as f64),
    ];
    let best = candidates
        .iter()
        .min_by(|a, b| {
            (a.1 / paper - 1.0)
                .abs()
                .total_cmp(&(b.1 / paper - 1.0).abs())
        })
        .unwrap();
    assert_eq!(best.0, "MACs conv+linear+attention @64", "{candidates:?}");
    assert!((best.1 / paper - 1.0).abs() < 0.03);
}

#[test]
fn mobilediffusion_and_md_lite_match_table_1() {
    for preset in ["mobilediffusion", "md-lite"] {
        let row = row_for(preset).unwrap();
        let spec = Config::load(preset).unwrap().spec;
        let channels: Vec<usize> = spec.levels.iter().map(|l| l.channels).collect();
        assert_eq!(channels, row.channels, "{preset} channels");
        assert_eq!(
            spec.res_block_count(),
            row.conv_blocks,
            "{preset} conv blocks"
        );
        assert_eq!(
            spec.self_attention_count(),
            row.self_attention,
            "{preset} SA"
        );
        assert_eq!(
            spec.cross_attention_count(),
            row.cross_attention,
            "{preset} CA"
        );
        let r = at(preset, GFLOPS_LATENT_SIZE);
        let params = r.params() as f64 / 1e6;
        let gmacs = r.macs.total() as f64 / 1e9;
        assert!(
            (params / row.params_m - 1.0).abs() <= 0.02,
            "{preset}: {params} M vs {}",
            row.params_m
        );
        assert!(
            (gmacs / row.gflops - 1.0).abs() <= 0.05,
            "{preset}: {gmacs} G vs {}",
            row.gflops
        );
    }
}

//! The per-block latency predictor (in the manner of nn-Meter's kernel tables): blocks measured
//! inside whole forwards of a few probe configs, keyed by their signature (the ops and shapes they
//! run, from the cost interpreter), and summed for any config built from them.
//!
//! A config's prediction is the sum of its blocks' table times, mapped to a whole forward by a
//! least-squares line `whole = a + b · sum` over the probes (the time outside blocks: skip
//! concatenations; and what the per-block runs' synchronisation adds); with fewer than three
//! probes, by their median ratio. A block no probe has run is estimated from the table's
//! blocks of the same kind by a least-squares line in MACs, and counted as such in the prediction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unetlab_cost::{BlockKind, BlockSignature};

/// Everything measured for one signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The block kind (`res block`, `transformer`, ...).
    pub kind: String,
    /// MACs of one run of the block.
    pub macs: u64,
    /// Seconds observed, one per probe block with this signature.
    pub seconds: Vec<f64>,
    /// Where it was first seen (`config: module path`).
    pub example: String,
}

impl TableEntry {
    /// Median of the observations.
    pub fn median(&self) -> f64 {
        median(&self.seconds)
    }
}

/// The table: signatures to times, and every probe's whole forward beside its summed blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// Signature → entry.
    pub entries: BTreeMap<String, TableEntry>,
    /// Per probe: (config name, whole-forward median, sum of its block medians).
    pub probes: Vec<(String, f64, f64)>,
}

/// A prediction and how much of it came from the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted seconds of one forward.
    pub seconds: f64,
    /// Blocks estimated by the per-kind fit (not in the table).
    pub fitted_blocks: usize,
    /// All blocks.
    pub blocks: usize,
}

fn kind_label(kind: Option<BlockKind>) -> String {
    kind.map_or_else(|| "other".to_string(), |k| k.label().to_string())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

impl LatencyTable {
    /// Adds one probe: the config's blocks (from the cost interpreter), each block's measured
    /// median by module path (from `unetlab bench --per-block`), and the whole forward's median.
    /// Returns the paths of blocks that had no timing (none when both walk the same forward).
    pub fn add_probe(
        &mut self,
        config: &str,
        blocks: &[BlockSignature],
        timings: &BTreeMap<String, f64>,
        whole_s: f64,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        let mut sum = 0.0;
        for b in blocks {
            let Some(&t) = timings.get(&b.path) else {
                missing.push(b.path.clone());
                continue;
            };
            sum += t;
            self.entries
                .entry(b.signature.clone())
                .or_insert_with(|| TableEntry {
                    kind: kind_label(b.place.kind),
                    macs: b.macs.total(),
                    seconds: Vec::new(),
                    example: format!("{config}: {}", b.path),
                })
                .seconds
                .push(t);
        }
        if sum > 0.0 && missing.is_empty() {
            self.probes.push((config.to_string(), whole_s, sum));
        }
        missing
    }

    /// Whether every block's signature is in the table.
    pub fn covers(&self, blocks: &[BlockSignature]) -> bool {
        blocks
            .iter()
            .all(|b| self.entries.contains_key(&b.signature))
    }

    /// Signatures of `blocks` the table lacks.
    pub fn unknown<'a>(&self, blocks: &'a [BlockSignature]) -> Vec<&'a str> {
        let mut out: Vec<&str> = blocks
            .iter()
            .filter(|b| !self.entries.contains_key(&b.signature))
            .map(|b| b.signature.as_str())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The predictor over the table as it stands.
    pub fn predictor(&self) -> Predictor {
        let known: BTreeMap<String, f64> = self
            .entries
            .iter()
            .map(|(s, e)| (s.clone(), e.median()))
            .collect();
        let mut by_kind: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for e in self.entries.values() {
            by_kind
                .entry(e.kind.clone())
                .or_default()
                .push((e.macs as f64, e.median()));
        }
        let (macs, seconds): (f64, f64) = self
            .entries
            .values()
            .fold((0.0, 0.0), |(m, s), e| (m + e.macs as f64, s + e.median()));
        let fallback_rate = if macs > 0.0 { seconds / macs } else { 0.0 };
        let fits = by_kind
            .into_iter()
            .map(|(k, points)| (k, Line::fit(&points, fallback_rate)))
            .collect();
        Predictor {
            known,
            fits,
            fallback_rate,
            calibration: self.calibration(),
        }
    }

    /// Whole forward from summed blocks: a least-squares line over three or more probes whose
    /// sums differ (and rise together), else the median ratio (1 without probes).
    fn calibration(&self) -> Line {
        let points: Vec<(f64, f64)> = self.probes.iter().map(|(_, w, s)| (*s, *w)).collect();
        let ratios: Vec<f64> = points.iter().map(|(s, w)| w / s).collect();
        let proportional = Line {
            intercept: 0.0,
            slope: if ratios.is_empty() {
                1.0
            } else {
                median(&ratios)
            },
        };
        if points.len() < 3 {
            return proportional;
        }
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx > 0.0 && sxy > 0.0 {
            let slope = sxy / sxx;
            Line {
                intercept: my - slope * mx,
                slope,
            }
        } else {
            proportional
        }
    }
}

/// `seconds = intercept + slope · MACs`, least squares (clamped at zero).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    intercept: f64,
    slope: f64,
}

impl Line {
    fn fit(points: &[(f64, f64)], fallback_rate: f64) -> Line {
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if points.len() >= 2 && sxx > 0.0 && sxy > 0.0 {
            let slope = sxy / sxx;
            Line {
                intercept: my - slope * mx,
                slope,
            }
        } else if mx > 0.0 {
            // One size seen (or no trend): proportional through that size's mean.
            Line {
                intercept: 0.0,
                slope: my / mx,
            }
        } else {
            Line {
                intercept: my,
                slope: fallback_rate,
            }
        }
    }

    fn at(&self, macs: f64) -> f64 {
        (self.intercept + self.slope * macs).max(0.0)
    }
}

/// Predicts forwards from a [`LatencyTable`].
#[derive(Debug, Clone)]
pub struct Predictor {
    known: BTreeMap<String, f64>,
    fits: BTreeMap<String, Line>,
    fallback_rate: f64,
    calibration: Line,
}

impl Predictor {
    /// The predicted latency of a forward made of `blocks`.
    pub fn predict(&self, blocks: &[BlockSignature]) -> Prediction {
        let mut seconds = 0.0;
        let mut fitted_blocks = 0;
        for b in blocks {
            seconds += match self.known.get(&b.signature) {
                Some(&t) => t,
                None => {
                    fitted_blocks += 1;
                    let macs = b.macs.total() as f64;
                    match self.fits.get(&kind_label(b.place.kind)) {
                        Some(line) => line.at(macs),
                        None => self.fallback_rate * macs,
                    }
                }
            };
        }
        Prediction {
            seconds: (self.calibration.intercept + self.calibration.slope * seconds).max(0.0),
            fitted_blocks,
            blocks: blocks.len(),
        }
    }

    /// The line from summed blocks to a whole forward: (intercept in seconds, slope).
    pub fn calibration(&self) -> (f64, f64) {
        (self.calibration.intercept, self.calibration.slope)
    }
}

//! Splitting a sweep's work units (a config's latency measurement, one training run) over the
//! tasks of a job array, and putting them back together.
//!
//! A unit belongs to shard `K` of `N` when the first 64 bits of SHA-256 of its identity are `K − 1`
//! modulo `N` (like cargo-nextest's `--partition hash:K/N`): the partition depends on the unit
//! alone, so adding a config moves no other unit. Inside a Slurm array task, the shard defaults to
//! the task's place in the array.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::cache::Cache;

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, 1..=count.
    pub index: u64,
    /// How many.
    pub count: u64,
}

impl Shard {
    /// Whether the unit with this identity is this shard's.
    pub fn contains(&self, unit: &str) -> bool {
        let digest = unetlab_files::sha256_hex(unit.as_bytes());
        let bits = u64::from_str_radix(&digest[..16], 16).expect("hex digits");
        bits % self.count + 1 == self.index
    }

    /// The shard of the Slurm array task this process runs in (`SLURM_ARRAY_TASK_ID` counted from
    /// `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`), if it runs in one.
    pub fn from_slurm() -> Result<Option<Shard>> {
        let var = |name: &str| -> Result<Option<u64>> {
            match std::env::var(name) {
                Ok(v) => match v.trim().parse() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => bail!("{name}={v} is not a number"),
                },
                Err(_) => Ok(None),
            }
        };
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID")?, var("SLURM_ARRAY_TASK_COUNT")?)
        else {
            return Ok(None);
        };
        let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        Shard::of_array_task(id, count, min).map(Some)
    }

    /// The shard of array task `id` in an array of `count` tasks numbered from `min`.
    pub fn of_array_task(id: u64, count: u64, min: u64) -> Result<Shard> {
        let index = id
            .checked_sub(min)
            .map(|i| i + 1)
            .filter(|&i| i <= count && count > 0);
        match index {
            Some(index) => Ok(Shard { index, count }),
            None => bail!(
                "SLURM_ARRAY_TASK_ID={id} is outside the array (min {min}, {count} tasks): \
                 arrays with gaps or steps need --shard K/N"
            ),
        }
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: give K/N, e.g. 1/4"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}`: `{x}` is not a whole number"))
        };
        let (index, count) = (parse(k)?, parse(n)?);
        if count == 0 || index == 0 || index > count {
            return Err(format!("`{s}`: K must be 1..=N and N at least 1"));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The flags that split a sweep (`ablate` or `search`) over several processes.
#[derive(clap::Args, Debug, Clone)]
pub struct ShardArgs {
    /// Do only shard K of N of the work units (each config's latency, each training run; a
    /// search's latency probes and checks too), chosen by a hash of the unit, so adding a config
    /// moves no other unit. A shard writes only the cache, never the outputs; a search shard
    /// stops at the first stage that needs other shards' units. Inside a Slurm array task the
    /// default is the task's place in the array.
    #[arg(long, value_name = "K/N", conflicts_with = "merge")]
    pub shard: Option<Shard>,
    /// Write the outputs from the cache alone (the shards' work): measure and train nothing, and
    /// fail naming every unit that is missing.
    #[arg(long, conflicts_with = "force")]
    pub merge: bool,
    /// The cache folder (default: `<out>/cache`); the shards of one sweep share it.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

impl ShardArgs {
    /// What this run does: `--merge`, `--shard`, the Slurm array task's shard, or everything.
    pub fn work(&self) -> Result<Work> {
        Ok(match (self.merge, self.shard) {
            (true, _) => Work::Merge,
            (false, Some(shard)) => Work::Shard(shard),
            (false, None) => Shard::from_slurm()?.map_or(Work::All, Work::Shard),
        })
    }

    /// Whether --shard or --merge was given (the Slurm scripts set them themselves).
    pub fn given(&self) -> bool {
        self.shard.is_some() || self.merge
    }

    /// The cache: `--cache`, else `<out>/cache`.
    pub fn open_cache(&self, out: &Path) -> Result<Cache> {
        match &self.cache {
            Some(dir) => Cache::at(dir),
            None => Cache::open(out),
        }
    }
}

/// Which units a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Every unit (one machine).
    All,
    /// Only one shard's units; no tables are written.
    Shard(Shard),
    /// No unit: everything is read from the cache, and a missing unit is an error.
    Merge,
}

impl Work {
    /// Whether this run measures or trains the unit (`Merge` never does).
    pub fn does(&self, unit: &str) -> bool {
        match self {
            Work::All => true,
            Work::Shard(s) => s.contains(unit),
            Work::Merge => false,
        }
    }

    /// Refuses `--prune` on a shard: it uses only its share of the cache, so it would remove
    /// the other shards' units.
    pub fn check_prune(&self, prune: bool) -> Result<()> {
        if prune && matches!(self, Work::Shard(_)) {
            bail!(
                "--prune: a shard uses only its share of the cache; prune with --merge or a whole run"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_every_unit_once() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "1/0", "3", "a/b", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let units: Vec<String> = (0..200).map(|i| format!("bench {i:064x}")).collect();
        let shards: Vec<Shard> = (1..=4).map(|index| Shard { index, count: 4 }).collect();
        let mut sizes = [0usize; 4];
        for u in &units {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].contains(u)).collect();
            assert_eq!(owners.len(), 1, "{u} belongs to exactly one shard");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 20), "roughly even: {sizes:?}");
    }

    #[test]
    fn prune_is_refused_on_a_shard_only() {
        let shard = Work::Shard(Shard { index: 1, count: 2 });
        let refused = shard.check_prune(true).unwrap_err().to_string();
        assert!(refused.contains("--prune"), "{refused}");
        assert!(shard.check_prune(false).is_ok());
        for whole in [Work::All, Work::Merge] {
            assert!(whole.check_prune(true).is_ok(), "{whole:?}");
        }
    }

    #[test]
    fn array_tasks_count_from_the_arrays_first_id() {
        // `--array=0-3` and `--array=1-4`: task ids differ, shards do not.
        assert_eq!(
            Shard::of_array_task(0, 4, 0).unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert_eq!(
            Shard::of_array_task(4, 4, 1).unwrap(),
            Shard { index: 4, count: 4 }
        );
        assert!(Shard::of_array_task(5, 4, 1).is_err());
        assert!(Shard::of_array_task(0, 4, 1).is_err());
    }
}

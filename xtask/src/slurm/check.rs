//! `cargo xtask slurm-check`: a real Slurm on this machine. Starts MUNGE and a one-node cluster
//! (slurmctld and slurmd, a generated minimal `slurm.conf`, state and spool under a scratch
//! folder), runs a smoke study as a 2-task array plus its merge job and checks the merged tables
//! against a single-process run, then cancels a task of a second array mid-run, resubmits, and
//! checks that nothing was lost or done twice. Every daemon it started is stopped, also on
//! failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{write_and_submit, ArrayOptions};

/// How long any one wait may take.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The configs of the smoke study: small, and of every block kind.
const CONFIGS: &[&str] = &[
    "configs/fixtures/tiny-sd.yaml",
    "configs/fixtures/every-choice.yaml",
    "configs/fixtures/tiny-sdxl.yaml",
];

/// Runs the check.
pub fn run(workspace: &Path) -> Result<()> {
    crate::setup::slurm()?;
    let scratch = crate::tools::target_dir(workspace)
        .join("slurm-check")
        .join(std::process::id().to_string());
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch)?;
    let cluster = Cluster::start(&scratch)?;
    let checked = check(&cluster, workspace, &scratch);
    drop(cluster);
    checked?;
    std::fs::remove_dir_all(&scratch).ok();
    println!("slurm-check: passed");
    Ok(())
}

fn check(cluster: &Cluster, workspace: &Path, scratch: &Path) -> Result<()> {
    // A 2-task array and its merge, against one process doing every unit.
    let reference = scratch.join("single");
    single(workspace, &reference, false)?;
    let arrayed = scratch.join("array");
    let jobs = submit(cluster, workspace, &arrayed, ("scripts-1", false))?;
    cluster.wait(&[&jobs.0, &jobs.1])?;
    cluster.expect_state(&jobs.1, "COMPLETED")?;
    same_rows(&reference, &arrayed)?;
    println!("slurm-check: a 2-task array plus merge gives the single process's rows");

    // A second array with training: cancel a task while it runs, then submit again.
    let trained_reference = scratch.join("single-trained");
    single(workspace, &trained_reference, true)?;
    let interrupted = scratch.join("interrupted");
    let (array, merge) = submit(cluster, workspace, &interrupted, ("scripts-2", true))?;
    let task = format!("{array}_1");
    cluster.wait_running(&task)?;
    cluster.scancel(&task)?;
    cluster.wait(&[&array])?;
    let cancelled = cluster.state(&task)?;
    if cancelled != "CANCELLED" {
        bail!("task {task} ended {cancelled}: the cancel did not land mid-run");
    }
    // Its merge waits on a dependency that can no longer be met: Slurm keeps it pending.
    let waiting = cluster.state(&merge)?;
    if waiting != "PENDING" {
        bail!("the merge is {waiting} although a task of its array was cancelled");
    }
    cluster.scancel(&merge)?;
    cluster.wait(&[&merge])?;
    println!("slurm-check: task {task} cancelled mid-run; its merge never ran");
    let (array, merge) = submit(cluster, workspace, &interrupted, ("scripts-3", true))?;
    cluster.wait(&[&array, &merge])?;
    cluster.expect_state(&merge, "COMPLETED")?;
    same_rows(&trained_reference, &interrupted)?;
    let units = cache_files(&interrupted.join("cache"))?;
    let expected = 2 * CONFIGS.len();
    if units.len() != expected {
        bail!(
            "after the resubmission the cache holds {} measurements and runs, not {expected}: {units:?}",
            units.len()
        );
    }
    println!("slurm-check: after a cancelled task and a resubmission, nothing lost or done twice");
    Ok(())
}

/// The smoke study in one process (every unit), writing `out`.
fn single(workspace: &Path, out: &Path, train: bool) -> Result<()> {
    let mut cmd = crate::tools::cargo();
    cmd.current_dir(workspace)
        .args(["xtask", "ablate"])
        .args(CONFIGS)
        .args(study_args(out, train));
    crate::tools::run_ok(&mut cmd).context("the single-process reference")
}

fn study_args(out: &Path, train: bool) -> Vec<String> {
    let mut v: Vec<String> = ["--budget", "smoke", "--study", "slurm-check", "--out"]
        .map(String::from)
        .to_vec();
    v.push(out.display().to_string());
    v.extend(["--runs".into(), out.join("runs").display().to_string()]);
    if train {
        v.extend(["--seeds".into(), "1".into(), "--jobs".into(), "1".into()]);
    } else {
        v.push("--no-train".into());
    }
    v
}

fn options(scripts: PathBuf) -> ArrayOptions {
    ArrayOptions {
        array: 2,
        partition: None,
        time: Some("00:10:00".into()),
        cpus_per_task: Some(1),
        gpus_per_task: None,
        submit: true,
        scripts: Some(scripts),
    }
}

/// The smoke study (with training or not) as a 2-task array plus merge, scripts in
/// `out/<scripts>`: the array's and the merge's job ids.
fn submit(
    cluster: &Cluster,
    workspace: &Path,
    out: &Path,
    (scripts, train): (&str, bool),
) -> Result<(String, String)> {
    let mut args: Vec<String> = CONFIGS.iter().map(|c| c.to_string()).collect();
    args.extend(study_args(out, train));
    args.extend(["--threads".into(), "1".into()]);
    cluster.submit(workspace, &args, options(out.join(scripts)))
}

/// The study tables of two runs, row for row, without the columns that are timings or say
/// when and by whom.
fn same_rows(a: &Path, b: &Path) -> Result<()> {
    let read = |dir: &Path| -> Result<Vec<Vec<String>>> {
        let path = dir.join("table.csv");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.lines().map(split_csv).collect())
    };
    let (ta, tb) = (read(a)?, read(b)?);
    let header = ta.first().context("an empty table")?;
    let kept: Vec<usize> = (0..header.len())
        .filter(|&i| {
            let h = &header[i];
            !(h.contains("latency")
                || h.contains("p10")
                || h.contains("p90")
                || h.contains("GFLOP/s")
                || h.contains("steps/s")
                || h.contains("measured by"))
        })
        .collect();
    let project = |t: &[Vec<String>]| -> Vec<Vec<String>> {
        t.iter()
            .map(|r| {
                kept.iter()
                    .map(|&i| r.get(i).cloned().unwrap_or_default())
                    .collect()
            })
            .collect()
    };
    let (pa, pb) = (project(&ta), project(&tb));
    if pa != pb {
        bail!(
            "{} and {} differ:\n{pa:?}\n{pb:?}",
            a.display(),
            b.display()
        );
    }
    if pa.len() != CONFIGS.len() + 1 {
        bail!("{} rows for {} configs", pa.len() - 1, CONFIGS.len());
    }
    Ok(())
}

/// CSV fields (quoted fields may hold commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out
}

/// The measurement and run files of a cache.
fn cache_files(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    // Results only: not the machine-free pointers, nor the `.partial` temp file a killed write
    // leaves behind.
    v.retain(|n| {
        n.ends_with(".json")
            && (n.starts_with("train-") || (n.starts_with("bench-") && !n.starts_with("bench-on-")))
    });
    v.sort();
    Ok(v)
}

/// A one-node cluster on this machine; dropping it stops its daemons.
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    pids: Vec<PathBuf>,
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd with state under `dir`, and waits for the node.
    pub fn start(dir: &Path) -> Result<Cluster> {
        let host = String::from_utf8(Command::new("hostname").arg("-s").output()?.stdout)?
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for sub in ["munge", "state", "spool", "logs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
            pids: Vec::new(),
        };
        let socket = dir.join("munge/munge.socket");
        let munge_pid = dir.join("munge/munged.pid");
        crate::tools::run_ok(
            Command::new("munged")
                .arg("--force")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", munge_pid.display()))
                .arg(format!(
                    "--log-file={}",
                    dir.join("logs/munged.log").display()
                ))
                .arg(format!(
                    "--seed-file={}",
                    dir.join("munge/munged.seed").display()
                )),
        )
        .context("starting munged")?;
        cluster.pids.push(munge_pid);
        let d = |p: &str| dir.join(p).display().to_string();
        let conf = format!(
            "# Written by cargo xtask slurm-check: a one-node cluster on this machine.\n\
             ClusterName=unetlab-check\nSlurmctldHost={host}\nSlurmctldPort=16817\nSlurmdPort=16818\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\nSlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\nSlurmdLogFile={d_log}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
             SchedulerType=sched/backfill\nReturnToService=2\nMpiDefault=none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\nMinJobAge=3600\n\
             NodeName={host} CPUs={cpus} State=UNKNOWN\n\
             PartitionName=check Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display(),
            state = d("state"),
            spool = d("spool"),
            ctld_pid = d("slurmctld.pid"),
            d_pid = d("slurmd.pid"),
            ctld_log = d("logs/slurmctld.log"),
            d_log = d("logs/slurmd.log"),
        );
        unetlab_files::write_file(&cluster.conf, conf.as_bytes())?;
        crate::tools::run_ok(
            cluster
                .command("slurmctld")
                .args(["-c", "-f"])
                .arg(&cluster.conf),
        )
        .context("starting slurmctld")?;
        cluster.pids.push(dir.join("slurmctld.pid"));
        crate::tools::run_ok(cluster.command("slurmd").arg("-f").arg(&cluster.conf))
            .context("starting slurmd")?;
        cluster.pids.push(dir.join("slurmd.pid"));
        let started = Instant::now();
        loop {
            let state = cluster.output(cluster.command("sinfo").args(["-h", "-o", "%T"]))?;
            if state.trim() == "idle" {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the node did not come up (sinfo: {}); see {}",
                    state.trim(),
                    dir.join("logs").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("slurm-check: one-node cluster up ({host}, {cpus} CPUs)");
        Ok(cluster)
    }

    /// A Slurm command against this cluster's configuration.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn output(&self, cmd: &mut Command) -> Result<String> {
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes and submits the study's array and merge scripts; their job ids.
    fn submit(
        &self,
        workspace: &Path,
        args: &[String],
        options: ArrayOptions,
    ) -> Result<(String, String)> {
        // sbatch finds the cluster through SLURM_CONF, as on any login node.
        std::env::set_var("SLURM_CONF", &self.conf);
        let sweep = super::Sweep {
            command: "ablate",
            name: "slurm-check".into(),
            arrays: 1,
        };
        let s = write_and_submit(&sweep, args, &options, workspace)?;
        let (arrays, merge) = s.jobs.context("submitted")?;
        Ok((arrays.into_iter().next().context("one array")?, merge))
    }

    /// Waits until none of `jobs` is queued or running.
    fn wait(&self, jobs: &[&str]) -> Result<()> {
        let started = Instant::now();
        loop {
            let queued = self.output(
                self.command("squeue")
                    .args(["-h", "-o", "%i", "-j"])
                    .arg(jobs.join(",")),
            )?;
            if queued.trim().is_empty() {
                return Ok(());
            }
            if started.elapsed() > TIMEOUT {
                bail!("jobs {jobs:?} still queued after {TIMEOUT:?}: {queued}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the array task `task` (`<job>_<i>`) runs.
    fn wait_running(&self, task: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.state(task)? == "RUNNING" {
                return Ok(());
            }
            if started.elapsed() > TIMEOUT {
                bail!("task {task} never ran");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn scancel(&self, task: &str) -> Result<()> {
        self.output(self.command("scancel").arg(task)).map(drop)
    }

    /// A job's (or array task's) state from `scontrol show job`.
    fn state(&self, job: &str) -> Result<String> {
        let text = self.output(self.command("scontrol").args(["show", "job", "-o", job]))?;
        let line = text.lines().next().unwrap_or("");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .map(str::to_string)
            .with_context(|| format!("no JobState for {job}: {line}"))
    }

    fn expect_state(&self, job: &str, want: &str) -> Result<()> {
        let state = self.state(job)?;
        if state != want {
            bail!(
                "job {job} ended {state}, not {want}; its log is under {}",
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    /// Stops the daemons, newest first, and waits for them to go.
    fn drop(&mut self) {
        for pid_file in self.pids.iter().rev() {
            let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill(2) with a pid read from the daemon's own pid file and SIGTERM.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let started = Instant::now();
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

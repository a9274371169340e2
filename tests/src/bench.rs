//! What every benchmark report states about its run, so that a figure in
//! `benchmarks/` can be traced to the code and the machine that produced it.

use std::process::Command;

/// One line: when, at which commit (and whether the tree had changes), on
/// what machine. The services and the load share that machine.
pub fn provenance() -> String {
    let when = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    format!("Run {when} at commit {}, on {}.", commit(), machine())
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn commit() -> String {
    match git(&["rev-parse", "--short=10", "HEAD"]) {
        // The reports themselves do not count: a run rewrites them one by one.
        Some(head)
            if git(&["status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/benchmarks"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("`{head}` with uncommitted changes")
        }
        Some(head) => format!("`{head}`"),
        None => "unknown (not a git checkout)".into(),
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        })
        .map(|kib| format!(", {:.0} GiB of memory", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}){memory_gib}")
}

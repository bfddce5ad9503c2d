//! `tributary chaos` as a user runs it, in its short form: two minutes of seeded faults on four
//! node processes (the command starts its own emulators and PostgreSQL on 127.0.0.1). It must
//! exit 0, inject several kinds of faults, and end with the line
//! `chaos: seed S, faults F, lost 0, duplicated 0`.
//!
//! The run's seed is fixed so that CI replays the same schedule; `TRIBUTARY_CHAOS_SEED` picks
//! another (the README's long run takes any).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The chaos process, stopped with everything it started if the test ends early: SIGINT (the
/// command then stops its nodes and PostgreSQL), then SIGKILL for its whole process group.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let pid = self.0.id().to_string();
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn two_minutes_of_seeded_faults_lose_and_double_nothing() {
    let seed: u64 = std::env::var("TRIBUTARY_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("tributary-chaos-test-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    command
        .args(["chaos", "--minutes", "2", "--seed", &seed.to_string(), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut guard = Guard(command.spawn().expect("tributary chaos starts"));
    let stderr = guard.0.stderr.take().expect("piped");
    let progress = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let stdout = std::io::read_to_string(guard.0.stdout.take().expect("piped")).unwrap_or_default();
    let status = guard.0.wait().expect("it exits");
    let stderr = progress.join().unwrap();
    eprintln!("{stderr}");
    assert!(status.success(), "tributary chaos failed ({status}):\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let want_prefix = format!("chaos: seed {seed}, faults ");
    let faults: usize = last
        .strip_prefix(&want_prefix)
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?}"));
    assert!(last.ends_with(", lost 0, duplicated 0"), "{last}");
    assert!(faults >= 10, "{faults} faults in two minutes");
    // "chaos: faults by kind: SIGSTOP 2, dynamodb black-holed 1, …": every family of fault.
    let kinds = stderr.lines().find_map(|l| l.strip_prefix("chaos: faults by kind: ")).unwrap_or_default().to_owned();
    let families: [&[&str]; 8] = [
        &["kill -9"],
        &["SIGSTOP"],
        &["dynamodb "],
        &["kinesis "],
        &["postgresql slow", "postgresql black-holed", "postgresql dropped"],
        &["postgresql restart"],
        &["outage"],
        &["split", "merge"],
    ];
    for family in families {
        assert!(family.iter().any(|k| kinds.contains(k)), "none of {family:?} among the faults: {kinds}");
    }
    // A passing run leaves nothing behind but the folder it was given.
    let _ = std::fs::remove_dir_all(&dir);
}

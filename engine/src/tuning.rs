//! Process-level tuning that has to happen before anything else runs.
//!
//! glibc's `memmove` switches to `rep movsb` for copies above a few KiB. On the machines we
//! measure on, that path runs at a quarter of the speed of the vector loop when source and
//! destination are misaligned relative to each other, which is what happens when wasmtime
//! copies a batch's string buffer into a plugin's linear memory: the plugin benchmark's
//! 1,024-row call took 40 to 150 µs from run to run (by where the buffers landed), and a
//! steady 26 µs with the threshold raised. glibc reads its tunables only at start, so the
//! binary sets `GLIBC_TUNABLES` and executes itself once more.

/// The tunable that keeps large copies on the vector path.
pub const MEMMOVE_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4294967295";

/// Re-executes the current program with [`MEMMOVE_TUNABLE`] set, unless it is set already
/// or the platform is not glibc on x86-64. Returns only if it did not re-execute.
pub fn relaunch_with_tuned_memmove() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains("x86_rep_movsb_threshold")
            || std::env::var_os("TRIBUTARY_NO_RELAUNCH").is_some()
        {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let tunables = if current.is_empty() {
            MEMMOVE_TUNABLE.to_string()
        } else {
            format!("{current}:{MEMMOVE_TUNABLE}")
        };
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = argv0 {
            cmd.arg0(argv0);
        }
        // `exec` only returns on failure, and then we carry on untuned.
        let error = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
        tracing::debug!(%error, "could not re-execute with tuned memmove");
    }
}

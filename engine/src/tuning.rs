//! Process-level tuning that has to happen before anything else runs.
//!
//! glibc's `memmove` switches to `rep movsb` for copies above a few KiB. On the machines we
//! measure on, that path runs at a quarter of the speed of the vector loop when source and
//! destination are misaligned relative to each other, which is what happens when wasmtime
//! copies a batch's string buffer into a plugin's linear memory: the plugin benchmark's
//! 1,024-row call took 40 to 150 µs from run to run (by where the buffers landed), and a
//! steady 26 µs with the threshold raised.
//!
//! glibc's `malloc` serves blocks above its mmap threshold with fresh `mmap`s and returns the
//! heap's free top to the kernel above its trim threshold. Training allocates and frees
//! megabyte tensors by the thousand a step, so each became page faults and zeroed pages:
//! a third of a training step's time in the kernel, and 1,270 against 1,948 tokens a second
//! for the 3.3M-parameter benchmark model with the thresholds raised to 32 MiB (glibc's
//! ceiling for it) and 4 GiB. The memory freed stays with the process for the next step.
//!
//! glibc reads its tunables only at start, so the binary sets `GLIBC_TUNABLES` and executes
//! itself once more.

/// The tunables: large copies on the vector path, large blocks from the heap, kept there.
pub const GLIBC_TUNABLES_SET: &str = "glibc.cpu.x86_rep_movsb_threshold=4294967295:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295";

/// Re-executes the current program with [`GLIBC_TUNABLES_SET`] set, unless it is set already
/// or the platform is not glibc on x86-64. Returns only if it did not re-execute.
pub fn relaunch_tuned() {
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
            GLIBC_TUNABLES_SET.to_string()
        } else {
            format!("{current}:{GLIBC_TUNABLES_SET}")
        };
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = argv0 {
            cmd.arg0(argv0);
        }
        // `exec` only returns on failure, and then we carry on untuned.
        let error = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
        tracing::debug!(%error, "could not re-execute with the glibc tunables");
    }
}

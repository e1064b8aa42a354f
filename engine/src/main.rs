//! The `tributary` binary: see [`tributary::cli`].

fn main() -> std::process::ExitCode {
    tributary::tuning::relaunch_with_tuned_memmove();
    tributary::cli::main()
}

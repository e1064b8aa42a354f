//! The `tributary` binary: see [`tributary::cli`].

fn main() -> std::process::ExitCode {
    tributary::tuning::relaunch_tuned();
    tributary::cli::main()
}

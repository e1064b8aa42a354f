//! The `tributary` binary: see [`tributary::cli`].

fn main() -> std::process::ExitCode {
    tributary::cli::main()
}

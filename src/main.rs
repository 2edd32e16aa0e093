//! The `chattail` binary: everything lives in the library; this file only hands over the
//! process's arguments and turns the outcome into an exit code.

fn main() -> std::process::ExitCode {
    chattail::cli::main()
}

use clap::Parser as _;

/// mimalloc instead of the system allocator: hookline allocates many small,
/// short-lived buffers per request, and the benchmark showed glibc's malloc
/// and free among the largest costs of the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hookline::cli::Cli::parse();
    match hookline::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

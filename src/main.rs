use clap::Parser;

/// mimalloc instead of the system allocator: the proxied hot path allocates a few dozen small
/// blocks per request (headers, bodies, futures), and with glibc's malloc that was a tenth of
/// its instructions (measured with callgrind; see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse())
}

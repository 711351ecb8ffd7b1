use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("streamhost: not built yet");
    std::process::exit(2);
}

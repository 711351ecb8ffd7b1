fn main() {
    eprintln!("streamhost-loadtest: not built yet");
    std::process::exit(2);
}

//! A stand-in for the `streamhost` binary used by the tests of `--spawn`: reads the same
//! generated config (`--config FILE`: listen, [component] server/jid/secret) and runs the
//! thread-per-connection test proxy of tests/support. Not a proxy to use.

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => &args[i + 1],
        _ => {
            eprintln!("usage: fake_streamhost --config FILE");
            std::process::exit(2);
        }
    };
    let cfg: toml::Table = std::fs::read_to_string(path)
        .expect("config readable")
        .parse()
        .expect("config is TOML");
    let listen = cfg["listen"][0].as_str().expect("listen[0]");
    let comp = &cfg["component"];
    let server = comp["server"].as_str().unwrap().parse().unwrap();
    let listener = std::net::TcpListener::bind(listen).expect("bind listen");
    eprintln!("fake_streamhost listening on {listen}");
    let _p = support::MiniProxy::start_on(
        listener,
        server,
        comp["jid"].as_str().unwrap(),
        comp["secret"].as_str().unwrap(),
        support::Fault::None,
        400,
    );
    // Runs until SIGTERM (default action) or 5 minutes, whichever comes first.
    std::thread::sleep(std::time::Duration::from_secs(300));
}

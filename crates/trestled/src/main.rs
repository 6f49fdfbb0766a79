//! `trestled`: see the library.

use clap::Parser;

fn main() {
    let opts = trestled::Options::parse();
    trestled::logger::init(opts.log_level);
    if let Err(e) = trestled::run(opts) {
        log::error!("{e}");
        eprintln!("trestled: {e}");
        std::process::exit(1);
    }
}

//! The `edgepass` binary: parse the command line, set up logging, run the role.

fn main() {
    println!("edgepass {}", env!("CARGO_PKG_VERSION"));
}

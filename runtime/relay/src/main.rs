//! The `dbward-relay` binary (placeholder until its issue lands).

fn main() {
    eprintln!("dbward-relay: not yet implemented");
    std::process::exit(2);
}

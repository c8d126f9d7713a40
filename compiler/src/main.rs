//! The `dbward` command line (placeholder until the front-end issue lands).

fn main() {
    eprintln!("dbward: not yet implemented");
    std::process::exit(2);
}

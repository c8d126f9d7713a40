//! For the fakes run as processes (`examples/`): a benchmark database learns each login token
//! as its role's password, so `password` authentication accepts exactly the last token issued.
//! Feature `fake` only; never in a relay.

/// `ALTER ROLE role PASSWORD 'password'` through psql with `conninfo` (a superuser's libpq
/// connection string). A failure is printed to stderr, not fatal: the session that needed the
/// token then fails and says so.
pub fn set_password(conninfo: &str, role: &str, password: &str) {
    let sql = format!(
        "ALTER ROLE \"{}\" PASSWORD '{}'",
        role.replace('"', "\"\""),
        password.replace('\'', "''")
    );
    match std::process::Command::new("psql")
        .args([conninfo, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "could not set the password of {role}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("could not run psql: {e}"),
    }
}

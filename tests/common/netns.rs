//! A network namespace behind a veth pair, for tests that put a peer on
//! "another host": made with `ip`, named uniquely per test, addressed on a
//! private /30 of 10.250.0.0/16 picked per test, and removed when dropped
//! (the veth pair, then the namespace), whatever the test did.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace with one end of a veth pair in it; deleted on drop.
pub struct Netns {
    ip: PathBuf,
    /// The namespace's name (`ip netns exec NAME`).
    pub name: String,
    /// The veth end in the default namespace.
    pub host_if: String,
    /// The default namespace's address on the pair.
    pub host_addr: String,
    /// The namespace's address on the pair.
    pub ns_addr: String,
}

/// Where the `ip` tool is: on `PATH`, or in the usual sbin directories
/// (often missing from a user's `PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `ip ARGS`; its stderr as the error when it fails.
fn run(tool: &PathBuf, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} {}` failed ({}): {}",
            tool.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The first /30 of 10.250.0.0/16, from the `start`th on, that no
/// interface of the default namespace has an address in: its third byte
/// and the fourth of its network address.
fn free_subnet(ip: &PathBuf, start: u32) -> Result<(u32, u32), String> {
    for i in 0..64 {
        let k = start.wrapping_add(i) % 16384;
        let (c, d) = (k >> 6, (k & 63) << 2);
        let out = Command::new(ip)
            .args([
                "-4",
                "-o",
                "addr",
                "show",
                "to",
                &format!("10.250.{c}.{d}/30"),
            ])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ip.display()))?;
        if out.status.success() && out.stdout.is_empty() {
            return Ok((c, d));
        }
    }
    Err("no free /30 in 10.250.0.0/16 near this pid".into())
}

impl Netns {
    /// Makes the namespace and the pair, both ends up, or says why it
    /// cannot (not root, no `ip`, no `CAP_NET_ADMIN` in a container): the
    /// caller skips with that reason. Whatever was made before a failure
    /// is removed.
    pub fn create(tag: &str) -> Result<Netns, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        let ip = find_tool("ip").ok_or("no `ip` tool (iproute2)")?;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A /30 of 10.250.0.0/16 (16384 of them) from the pid and the
        // count, so that parallel tests and runs do not meet; the next one
        // if an address of it is in use already.
        let (c, d) = free_subnet(&ip, pid.wrapping_mul(16).wrapping_add(n))?;
        let ns = Netns {
            name: format!("isocall-{tag}-{pid}-{n}"),
            host_if: format!("isc{pid:x}x{n}h"),
            host_addr: format!("10.250.{c}.{}", d + 1),
            ns_addr: format!("10.250.{c}.{}", d + 2),
            ip,
        };
        let peer_if = ns.host_if.replace('h', "n");
        let host_cidr = format!("{}/30", ns.host_addr);
        let ns_cidr = format!("{}/30", ns.ns_addr);
        run(&ns.ip, &["netns", "add", &ns.name])?;
        // From here on, dropping `ns` removes what exists.
        let setup: [&[&str]; 8] = [
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
            &["link", "set", &peer_if, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &peer_if],
            &["-n", &ns.name, "link", "set", &peer_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
            // Both ends up: wait for nothing more (no DAD on IPv4).
            &["-n", &ns.name, "addr", "show", "dev", &peer_if],
        ];
        for args in setup {
            run(&ns.ip, args)?;
        }
        Ok(ns)
    }

    /// The command that starts a program inside the namespace (followed
    /// by the program and its arguments).
    pub fn launcher(&self) -> Vec<String> {
        vec![
            self.ip.display().to_string(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; it may be gone
        // already (never made, or gone with the namespace).
        let _ = run(&self.ip, &["link", "del", &self.host_if]);
        if let Err(e) = run(&self.ip, &["netns", "del", &self.name]) {
            eprintln!("netns cleanup: {e}");
        }
    }
}

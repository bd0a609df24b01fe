//! A slow link to "another host" for `isocall bench --netem`: a network
//! namespace of its own behind a veth pair, made with `ip`, both ends of
//! the pair limited to a rate with `tc` (netem's `rate`, or a token bucket
//! where the kernel has no netem), addressed on a /30 of 10.250.0.0/16
//! picked from the bench's pid. Root only. Removed when dropped (the pair,
//! then the namespace), whatever the bench did; the peer started in it
//! (see [`Link::launcher`]) must be dropped first.

use std::path::PathBuf;
use std::process::Command;

use super::Res;

/// The namespace, the pair and its shaping; removed on drop.
pub struct Link {
    ip: PathBuf,
    /// The namespace's name.
    name: String,
    /// The pair's end in the default namespace.
    host_if: String,
    /// The namespace's address on the pair.
    pub ns_addr: std::net::Ipv4Addr,
    /// The queueing discipline that limits the rate, as given to `tc`.
    pub qdisc: String,
}

/// Where tool `name` is: on `PATH` or in the usual sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `tool args`; what it said on stderr as the error when it fails.
fn run(tool: &PathBuf, args: &[&str]) -> Res<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{} {}` failed ({}): {}",
        tool.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
    .into())
}

/// The first /30 of 10.250.0.0/16, from the `start`th on (modulo their
/// 16384), that no interface of the default namespace has an address in:
/// its third byte and the fourth of its network address.
fn free_subnet(ip: &PathBuf, start: u32) -> Res<(u8, u8)> {
    for i in 0..64 {
        let k = start.wrapping_add(i) % 16384;
        let (c, d) = ((k >> 6) as u8, ((k & 63) << 2) as u8);
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

impl Link {
    /// Makes the namespace and the pair, both ends up and limited to
    /// `rate` (as `tc` writes it, e.g. `100mbit`).
    ///
    /// # Errors
    ///
    /// Not root, no `ip` or `tc`, or a step refused (no `CAP_NET_ADMIN`);
    /// whatever was made before is removed.
    pub fn create(rate: &str) -> Res<Link> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "--netem needs root (it makes a network namespace and shapes a link with tc)"
                    .into(),
            );
        }
        let ip = find_tool("ip").ok_or("--netem needs `ip` (iproute2)")?;
        let tc = find_tool("tc").ok_or("--netem needs `tc` (iproute2)")?;
        let pid = std::process::id();
        let (c, d) = free_subnet(&ip, pid)?;
        let mut link = Link {
            name: format!("isocall-bench-{pid}"),
            host_if: format!("iscb{pid:x}h"),
            ns_addr: std::net::Ipv4Addr::new(10, 250, c, d + 2),
            qdisc: String::new(),
            ip,
        };
        let peer_if = format!("iscb{pid:x}n");
        let host_cidr = format!("10.250.{c}.{}/30", d + 1);
        let ns_cidr = format!("{}/30", link.ns_addr);
        let ns = link.name.clone();
        run(&link.ip, &["netns", "add", &ns])?;
        // From here on, dropping `link` removes what exists.
        let setup: [&[&str]; 7] = [
            &[
                "link",
                "add",
                &link.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
            &["link", "set", &peer_if, "netns", &ns],
            &["addr", "add", &host_cidr, "dev", &link.host_if],
            &["link", "set", &link.host_if, "up"],
            &["-n", &ns, "addr", "add", &ns_cidr, "dev", &peer_if],
            &["-n", &ns, "link", "set", &peer_if, "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
        ];
        for args in setup {
            run(&link.ip, args)?;
        }
        // netem's rate where the kernel has netem, else a token bucket
        // (burst: a few full-sized segments; queue: 200 ms at the rate, so that a 1 MiB burst is queued, not dropped).
        let choices = [
            vec!["netem", "rate", rate],
            vec!["tbf", "rate", rate, "burst", "64kb", "latency", "200ms"],
        ];
        let mut why = Vec::new();
        for qdisc in &choices {
            let on = |netns: Option<&str>, dev: &str| {
                let mut args = netns.map_or(vec![], |n| vec!["-n", n]);
                args.extend(["qdisc", "replace", "dev", dev, "root"]);
                args.extend(qdisc.iter().copied());
                run(&tc, &args)
            };
            match on(None, &link.host_if).and_then(|()| on(Some(&ns), &peer_if)) {
                Ok(()) => {
                    link.qdisc = qdisc.join(" ");
                    return Ok(link);
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        Err(format!("cannot limit the link's rate: {}", why.join("; ")).into())
    }

    /// The command that starts a program inside the namespace (the
    /// program and its arguments follow).
    pub fn launcher(&self) -> Vec<String> {
        vec![
            self.ip.display().to_string(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // One end of a veth pair takes the other (and its qdisc) with it.
        let _ = run(&self.ip, &["link", "del", &self.host_if]);
        if let Err(e) = run(&self.ip, &["netns", "del", &self.name]) {
            eprintln!("isocall bench: cleanup: {e}");
        }
    }
}

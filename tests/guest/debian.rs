//! A real distribution through kvm-mcp's MCP tools, as a user drives it: the Debian 12
//! cloud image of `fixtures/build-debian.sh` (systemd, cloud-init NoCloud, qemu-ga,
//! openssh) as the master of an overlay VM with a cloud-init user and key. Its first
//! boot takes minutes under TCG, so nextest runs one of these at a time (test group
//! `debian`), and each test runs in a network namespace of its own (host ports stay
//! private).

use serde_json::{Value, json};

use crate::common::debian::{DEBIAN_DEADLINE, Mcp, debian_env, debian_image, ssh, ssh_key};
use crate::common::netns::in_netns;

/// `create_vm` arguments for a started overlay VM on the Debian image: 512 MiB, one
/// vCPU, the `linux` profile, user networking with host port `ssh_port` forwarded to the
/// guest's sshd, and a seed creating user `tester` with `public_key`.
fn debian_vm(name: &str, hostname: &str, ssh_port: u16, public_key: &str) -> Value {
    json!({
        "name": name,
        "os_variant": "linux",
        "memory_mib": 512,
        "vcpus": 1,
        "disk_source": { "type": "master", "image": debian_image() },
        "disk_size_gib": 4,
        "network": "user",
        "port_forwards": [{ "host_port": ssh_port, "guest_port": 22 }],
        "cloud_init": { "hostname": hostname, "user": "tester", "ssh_keys": [public_key] },
        "start": true,
    })
}

/// Waits through `wait_for_console` for the image's marker that cloud-init has finished
/// (or is disabled); the marker's line.
async fn wait_ready(mcp: &Mcp, name: &str) -> String {
    let args = json!({ "name": name, "pattern": "DEBIAN-READY", "timeout_s": DEBIAN_DEADLINE.as_secs() });
    let (found, _) = mcp.ok("wait_for_console", args).await;
    found["line"].as_str().expect("matched line").to_owned()
}

#[test]
fn seeded_user_reaches_ssh_through_a_forward_and_stop_vm_is_a_guest_poweroff() {
    let (ready, hostname, stopped, console) = in_netns(|| async {
        let env = debian_env();
        let key = ssh_key(env.dir.path());
        let mcp = Mcp::connect(env.ops.clone()).await;
        let (created, _) = mcp.ok("create_vm", debian_vm("deb-ssh", "deb-seeded", 2222, &key.public)).await;
        assert_eq!(created["state"], "running", "{created:#}");

        let ready = wait_ready(&mcp, "deb-ssh").await;
        let hostname = ssh(&key, "tester", 2222, "hostname").await;
        let (stop, _) = mcp.ok("stop_vm", json!({ "name": "deb-ssh" })).await;
        assert_eq!(stop["state"], "shutoff", "{stop:#}");
        let (stopped, _) = mcp.ok("get_vm", json!({ "name": "deb-ssh" })).await;
        (ready, hostname, stopped, env.console("deb-ssh"))
    });
    assert!(ready.contains("cloud-init=done"), "{ready}");
    assert_eq!(hostname.trim(), "deb-seeded");
    let vm = &stopped["vm"];
    assert_eq!(
        (&vm["state"], &vm["reason"], &vm["exit"]["code"]),
        (&json!("shutoff"), &json!("guest_poweroff"), &json!(0)),
        "{stopped:#}"
    );
    assert!(console.contains("DEBIAN-STOPPING"), "systemd's shutdown never ran; console:\n{console}");
}

/// A guest that answers the first press through systemd (Debian under TCG takes 5-13 s
/// from the first press to power off) is seen going down and waited for: no fallback
/// to the guest agent is tried or named, and the stop is a guest poweroff.
#[test]
fn stop_vm_of_a_guest_that_answers_the_first_press_names_no_fallback() {
    let (messages, stopped) = in_netns(|| async {
        let env = debian_env();
        let key = ssh_key(env.dir.path());
        let mcp = Mcp::connect(env.ops.clone()).await;
        mcp.ok("create_vm", debian_vm("deb-stop", "deb-stop", 2223, &key.public)).await;
        wait_ready(&mcp, "deb-stop").await;
        let (r, token) = mcp.call("stop_vm", json!({ "name": "deb-stop" })).await;
        assert_ne!(r.is_error, Some(true), "stop_vm failed: {r:?}");
        (mcp.seen.wait_for(&token, "is shutoff").await, r.structured_content.unwrap_or_default())
    });
    // The fallback would say "asking its guest agent" (or that none is connected); a
    // sign of shutdown may name the agent ("its guest agent closed its channel").
    assert!(
        !messages.iter().any(|m| m.contains("asking its guest agent") || m.contains("no guest agent")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m.contains("the guest is shutting down (")), "{messages:#?}");
    assert_eq!(stopped["reason"], "guest_poweroff", "{stopped:#}");
}

/// A guest whose NIC has no address (here its first-boot commands stop systemd-networkd
/// and take the NIC down) is reported by the guest agent as such, and `get_vm_ip` says
/// so: no address, a note naming the guest's interface, and no slirp guess in its place.
#[test]
fn get_vm_ip_of_a_guest_whose_nic_is_down_reports_no_address() {
    let (ready, ips) = in_netns(|| async {
        let env = debian_env();
        let mcp = Mcp::connect(env.ops.clone()).await;
        let nic_down = [
            "systemctl stop systemd-networkd.service systemd-networkd.socket",
            "for n in /sys/class/net/en*; do ip link set dev \"${n##*/}\" down; done",
        ];
        let args = json!({
            "name": "deb-noip",
            "os_variant": "linux",
            "memory_mib": 512,
            "vcpus": 1,
            "disk_source": { "type": "master", "image": debian_image() },
            "network": "user",
            "cloud_init": { "run_commands": nic_down },
            "start": true,
        });
        mcp.ok("create_vm", args).await;
        let ready = wait_ready(&mcp, "deb-noip").await;
        let (ips, _) = mcp.ok("get_vm_ip", json!({ "name": "deb-noip" })).await;
        (ready, ips)
    });
    assert!(ready.contains("cloud-init=done") && ready.contains("addrs=none"), "{ready}");
    let nic = &ips["nics"][0];
    assert_eq!((&ips["ip"], &nic["addresses"]), (&Value::Null, &json!([])), "{ips:#}");
    let note = nic["note"].as_str().unwrap_or_default();
    assert!(note.contains("no IPv4 or global IPv6 address on en"), "{ips:#}");
}

/// Issue 13, items 1 and 2: a linked clone of a cloud-init VM comes up with network (its
/// NIC in the slot the source's guest configured), its own host name (resolvable, so
/// `sudo` does not warn), new SSH host keys and a new machine-id.
#[test]
fn linked_clone_of_a_cloud_init_vm_is_a_new_machine_with_network() {
    let cmd = "hostname; cat /etc/ssh/ssh_host_ed25519_key.pub; cat /etc/machine-id; sudo -n true 2>&1; ip -o link";
    let (source, clone, identity) = in_netns(|| async {
        let env = debian_env();
        let key = ssh_key(env.dir.path());
        let mcp = Mcp::connect(env.ops.clone()).await;
        mcp.ok("create_vm", debian_vm("deb-src", "deb-src", 2224, &key.public)).await;
        wait_ready(&mcp, "deb-src").await;
        let source = ssh(&key, "tester", 2224, cmd).await;
        mcp.ok("stop_vm", json!({ "name": "deb-src" })).await;
        let args = json!({ "source": "deb-src", "name": "deb-cl", "start": true,
                           "port_forwards": [{ "host_port": 2225, "guest_port": 22 }] });
        let (cloned, _) = mcp.ok("clone_vm", args).await;
        wait_ready(&mcp, "deb-cl").await;
        let clone = ssh(&key, "tester", 2225, cmd).await;
        mcp.ok("stop_vm", json!({ "name": "deb-cl" })).await;
        (source, clone, cloned["identity"].clone())
    });
    let (s, c): (Vec<&str>, Vec<&str>) = (source.lines().collect(), clone.lines().collect());
    assert_eq!((s[0], c[0]), ("deb-src", "deb-cl"), "source:\n{source}\nclone:\n{clone}");
    assert_ne!(s[1], c[1], "SSH host key unchanged");
    assert_ne!(s[2], c[2], "machine-id unchanged");
    assert!(!clone.contains("unable to resolve host"), "{clone}");
    assert!(identity["reset"].to_string().contains("machine-id"), "{identity:#}");
}

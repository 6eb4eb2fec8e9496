//! User-mode networking with port forwards. Each test runs in a network namespace of its
//! own (loopback brought up there), so its host ports never touch the host's.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ids::{ForwardSelector, PortForward};
use kvm_mcp::ops::{CreateRequest, IpQuery, IpSource, StopOptions, no_progress};

use crate::common::net::{HTTP_MARKER, http_get, http_get_once, lo_up};
use crate::common::netns::in_netns;
use crate::common::vm::TestEnv;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn user_vm(env: &TestEnv, name: &str, forwards: Vec<PortForward>) -> CreateRequest {
    CreateRequest { port_forwards: forwards, start: true, ..env.disk_vm(name) }
}

#[test]
fn forward_from_create_reaches_the_guests_httpd() {
    let page = in_netns(|| async {
        lo_up().await;
        let env = TestEnv::new();
        env.ops.create(user_vm(&env, "fwd", vec![PortForward::tcp(8080, 80)])).await.expect("create and start");
        env.wait_console("fwd", "FIXTURE-HTTPD", 1).await;
        http_get(local(8080)).await
    });
    assert!(page.contains(HTTP_MARKER), "{page}");
}

#[test]
fn forward_added_at_runtime_reaches_the_guest_and_removal_closes_it() {
    let (page, listed, after_remove) = in_netns(|| async {
        lo_up().await;
        let env = TestEnv::new();
        env.ops.create(user_vm(&env, "rtfwd", vec![])).await.expect("create and start");
        env.wait_console("rtfwd", "FIXTURE-HTTPD", 1).await;
        let listed = env.ops.add_port_forward("rtfwd", None, PortForward::tcp(8081, 80)).await.expect("add");
        let page = http_get(local(8081)).await;
        let sel = ForwardSelector { protocol: Default::default(), host_addr: None, host_port: 8081 };
        env.ops.remove_port_forward("rtfwd", None, sel).await.expect("remove");
        (page, listed, http_get_once(local(8081)).await)
    });
    assert!(page.contains(HTTP_MARKER), "{page}");
    assert_eq!(
        listed.iter().map(|f| (f.forward, f.active)).collect::<Vec<_>>(),
        vec![(PortForward::tcp(8081, 80), Some(true))]
    );
    assert_eq!(after_remove.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused));
}

#[test]
fn forward_added_at_runtime_survives_a_restart() {
    let listed = in_netns(|| async {
        lo_up().await;
        let env = TestEnv::new();
        env.ops.create(user_vm(&env, "keep", vec![])).await.expect("create and start");
        env.ops.add_port_forward("keep", None, PortForward::tcp(8082, 80)).await.expect("add");
        env.ops.stop("keep", StopOptions { force: true, timeout: None }, &no_progress).await.expect("stop");
        env.ops.start("keep").await.expect("start again");
        env.ops.list_port_forwards("keep").await.expect("list")
    });
    assert_eq!(
        listed.iter().map(|f| (f.forward, f.active)).collect::<Vec<_>>(),
        vec![(PortForward::tcp(8082, 80), Some(true))]
    );
}

#[test]
fn forward_on_a_host_port_held_by_another_program_is_refused() {
    let (kind, message) = in_netns(|| async {
        lo_up().await;
        let held = TcpListener::bind(local(8083)).expect("hold port 8083");
        let env = TestEnv::new();
        env.ops.create(user_vm(&env, "clash", vec![])).await.expect("create and start");
        let err = env.ops.add_port_forward("clash", None, PortForward::tcp(8083, 80)).await.unwrap_err();
        drop(held);
        (err.kind(), kvm_mcp::error::chain(&err))
    });
    assert_eq!(kind, ErrorKind::Conflict, "{message}");
    assert!(message.contains("host port tcp:127.0.0.1:8083 cannot be used"), "{message}");
}

#[test]
fn get_vm_ip_of_a_booting_user_mode_guest_is_the_slirp_address() {
    let found = in_netns(|| async {
        let env = TestEnv::new();
        env.ops.create(user_vm(&env, "slirp", vec![])).await.expect("create and start");
        env.ops.get_vm_ip("slirp", IpQuery::default(), &no_progress).await.expect("get_vm_ip")
    });
    assert_eq!((found.ip, found.source), (Some(Ipv4Addr::new(10, 0, 2, 15).into()), Some(IpSource::Slirp)));
}

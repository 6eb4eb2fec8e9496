//! `create_template`: a stopped VM or a new VM on an image becomes a template for good;
//! clones overlay it, it refuses to start or be deleted while they exist, and stays a
//! template once they are gone. Refusals name the argument and leave nothing behind.

use kvm_mcp::error::ErrorKind;
use kvm_mcp::ops::{CloneRequest, DeleteOptions, TemplateRequest};

use super::{from_master, master, s};
use crate::common::images::qemu_img_info;
use crate::common::images::storage_env;

fn spec_of(env: &crate::common::vm::TestEnv, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(env.dir.path().join("state/vms").join(name).join("spec.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn vm_dirs(env: &crate::common::vm::TestEnv) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.dir.path().join("state/vms"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn a_template_on_an_image_is_an_overlay_that_stays_a_template() {
    let env = storage_env(serde_json::json!({}));
    let req = TemplateRequest {
        name: "base".into(),
        image: Some("master.qcow2".into()),
        memory_mib: Some(128),
        ..TemplateRequest::default()
    };
    let info = env.ops.create_template(req).await.expect("template on an image");
    assert_eq!((info.template, info.memory_mib, info.state.is_active()), (true, 128, false));
    let disk = info.disks[0].path.clone();
    assert_eq!(qemu_img_info(&disk)[0]["backing-filename"].as_str(), Some(s(&master(&env))));
    let spec = spec_of(&env, "base");
    assert_eq!((spec["template"].as_bool(), spec["made_template"].as_bool()), (Some(true), Some(true)));

    // A clone overlays it; while the clone exists the template neither starts nor goes.
    env.ops
        .clone_vm(CloneRequest { source: "base".into(), name: "c1".into(), ..CloneRequest::default() })
        .await
        .expect("linked clone of the template");
    let start = env.ops.start("base").await.unwrap_err();
    assert_eq!(start.kind(), ErrorKind::Conflict, "{start}");
    let del = env.ops.delete_with("base", DeleteOptions::default()).await.unwrap_err();
    assert_eq!((del.kind(), disk.exists()), (ErrorKind::Conflict, true), "{del}");
    assert!(env.ops.list().unwrap().iter().any(|v| v.name == "base" && v.template));

    // Once the clone is gone it is still a template, and free to delete.
    env.ops.delete_with("c1", DeleteOptions::default()).await.unwrap();
    assert!(env.ops.info("base").unwrap().template);
    env.ops.delete_with("base", DeleteOptions::default()).await.expect("an unused template is deleted");
    assert!(!disk.exists());
    assert!(master(&env).exists(), "the image under the template stays");
}

#[tokio::test]
async fn a_stopped_vm_becomes_a_template_and_may_be_marked_again() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "web").await;
    let req = TemplateRequest { name: "web".into(), ..TemplateRequest::default() };
    assert!(env.ops.create_template(req.clone()).await.unwrap().template);
    let before = spec_of(&env, "web");
    assert!(env.ops.create_template(req).await.unwrap().template, "marking twice is no error");
    assert_eq!(spec_of(&env, "web"), before, "and changes nothing");
}

#[tokio::test]
async fn hostile_template_requests_are_refused_by_field_and_leave_nothing() {
    let env = storage_env(serde_json::json!({}));
    from_master(&env, "web").await;
    let before = spec_of(&env, "web");
    let cases: Vec<(TemplateRequest, &str)> = vec![
        (TemplateRequest { name: "web".into(), memory_mib: Some(512), ..TemplateRequest::default() }, "memory_mib"),
        (
            TemplateRequest { name: "web".into(), os_variant: Some("x".into()), ..TemplateRequest::default() },
            "os_variant",
        ),
        (TemplateRequest { name: "web".into(), pool_size: Some(17), ..TemplateRequest::default() }, "pool_size"),
        (
            TemplateRequest { name: "t1".into(), image: Some("../../etc/shadow".into()), ..TemplateRequest::default() },
            "image",
        ),
        (TemplateRequest { name: "t2".into(), image: Some("/dev/zero".into()), ..TemplateRequest::default() }, "image"),
        (
            TemplateRequest { name: "-rf".into(), image: Some("master.qcow2".into()), ..TemplateRequest::default() },
            "name",
        ),
        (TemplateRequest { name: "nosuch".into(), ..TemplateRequest::default() }, "nosuch"),
    ];
    for (req, field) in cases {
        let err = env.ops.create_template(req.clone()).await.expect_err(&format!("{req:?} is refused"));
        let text = err.to_string();
        assert!(text.contains(field), "{req:?}: {text}");
        assert!(text.len() < 600, "{text}");
    }
    assert_eq!(vm_dirs(&env), vec!["web".to_owned()], "no VM was left behind");
    assert_eq!(spec_of(&env, "web"), before, "the VM is untouched");
}

#[test]
fn the_cli_makes_templates_and_names_a_stray_flag() {
    let env = storage_env(serde_json::json!({}));
    let made = env.cli(&["vm", "template", "cli-base", "--image", "master.qcow2", "--vcpus", "1"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(env.ops.info("cli-base").unwrap().template);
    let stray = env.cli(&["vm", "template", "cli-base", "--memory", "64"]);
    let err = String::from_utf8_lossy(&stray.stderr);
    assert!(!stray.status.success() && err.contains("memory_mib") && err.contains("image"), "{err}");
}

//! Provisioning files of new VMs: the Ignition config validated against the spec's
//! schema (the part kvm-mcp writes), the cloud-init seed read back with mtools, and
//! a private UEFI variable store per VM.

use std::process::Command;

use kvm_mcp::ops::{CreateRequest, DiskSource};
use kvm_mcp::provision::cloudinit::CloudInitRequest;
use kvm_mcp::provision::ignition::IgnitionRequest;

use crate::common::images::storage_env;

fn req(name: &str) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        disk: Some(DiskSource::Master(Some("master.qcow2".into()))),
        network: Some("user".into()),
        disk_size_gib: Some(1),
        ..CreateRequest::default()
    }
}

#[tokio::test]
async fn ignition_config_validates_against_the_spec_schema() {
    let env = storage_env(serde_json::json!({}));
    let ign = IgnitionRequest {
        hostname: Some("fcos1".into()),
        ssh_key: Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f test@host".into(),
        ),
        password_hash: Some("$6$salt$hash".into()),
        timezone: Some("UTC".into()),
        ..IgnitionRequest::default()
    };
    let r = CreateRequest { os_variant: Some("fedora-coreos".into()), ignition: Some(ign), ..req("fcos1") };
    env.ops.create(r).await.unwrap();
    let file = env.dir.path().join("state/vms/fcos1/ignition.json");
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/storage/ignition-subset.schema.json");
    let script = "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))); print('valid')";
    let out = Command::new("python3").args(["-c", script]).arg(&file).arg(schema).output().unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        (&cfg["ignition"]["version"], &cfg["passwd"]["users"][0]["name"], &cfg["storage"]["links"][0]["target"]),
        (&serde_json::json!("3.4.0"), &serde_json::json!("core"), &serde_json::json!("../usr/share/zoneinfo/UTC"))
    );
}

#[tokio::test]
async fn cloud_init_seed_is_a_cidata_fat_volume_with_the_files() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest { hostname: Some("seed1".into()), ..CloudInitRequest::default() };
    let info = env.ops.create(CreateRequest { cloud_init: Some(ci), ..req("seed1") }).await.unwrap();
    let seed = info.disks.iter().find(|d| d.readonly).unwrap().path.clone();
    let label = Command::new("mlabel").args(["-s", "-i"]).arg(&seed).arg("::").output().unwrap();
    let meta = Command::new("mtype").arg("-i").arg(&seed).arg("::meta-data").output().unwrap();
    assert!(String::from_utf8_lossy(&label.stdout).contains("cidata"), "{label:?}");
    assert!(String::from_utf8_lossy(&meta.stdout).contains("local-hostname: \"seed1\""), "{meta:?}");
}

#[tokio::test]
async fn each_uefi_vm_gets_its_own_variable_store() {
    let env = storage_env(serde_json::json!({}));
    let a = env.ops.create(CreateRequest { os_variant: Some("linux-uefi".into()), ..req("ua") }).await.unwrap();
    let b = env.ops.create(CreateRequest { os_variant: Some("linux-uefi".into()), ..req("ub") }).await.unwrap();
    let vars = |n: &str| env.dir.path().join(format!("state/vms/{n}/OVMF_VARS.fd"));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("state/vms/ua/spec.json")).unwrap()).unwrap();
    assert_eq!((a.name, b.name), ("ua".to_owned(), "ub".to_owned()));
    assert_eq!(std::fs::read(vars("ua")).unwrap(), std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap());
    assert_eq!(spec["uefi"]["vars"].as_str(), vars("ua").to_str());
}

#[tokio::test]
async fn bad_cloud_init_field_leaves_nothing_behind() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest { hostname: Some("bad host".into()), ..CloudInitRequest::default() };
    let err = env.ops.create(CreateRequest { cloud_init: Some(ci), ..req("badci") }).await.unwrap_err();
    assert_eq!(err.to_string(), "cloud_init.hostname: \"bad host\" is not a valid host name");
    assert_eq!((env.dir.path().join("disks/badci.qcow2").exists(), env.ops.info("badci").is_err()), (false, true));
}

fn seed_text(info: &kvm_mcp::ops::VmInfo, file: &str) -> String {
    let seed = info.disks.iter().find(|d| d.readonly).unwrap().path.clone();
    let files = kvm_mcp::storage::read_fat_files(&seed, &[file], 16 << 20, 1 << 20).unwrap();
    String::from_utf8(files[0].clone().unwrap()).unwrap()
}

#[tokio::test]
async fn cloud_init_fields_and_user_data_land_in_one_cloud_config() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest {
        user: Some("ops".into()),
        groups: vec!["docker".into()],
        timezone: Some("Europe/Berlin".into()),
        instance_id: Some("web-1.v2".into()),
        write_files: vec![kvm_mcp::provision::cloudinit::WriteFile {
            path: "/etc/motd".into(),
            content: "hi\n".into(),
            permissions: Some("644".into()),
            ..Default::default()
        }],
        user_data: Some("#cloud-config\nlocale: C.UTF-8\nntp:\n  enabled: yes\n".into()),
        ..CloudInitRequest::default()
    };
    let info = env.ops.create(CreateRequest { cloud_init: Some(ci), ..req("fields") }).await.unwrap();
    let user: serde_json::Value = serde_yaml_ng::from_str(&seed_text(&info, "user-data")).unwrap();
    let meta = seed_text(&info, "meta-data");
    assert_eq!(
        (&user["users"][1]["groups"], &user["timezone"], &user["write_files"][0]["permissions"]),
        (&serde_json::json!(["docker"]), &serde_json::json!("Europe/Berlin"), &serde_json::json!("0644"))
    );
    assert_eq!((&user["manage_etc_hosts"], &user["locale"]), (&serde_json::json!(true), &serde_json::json!("C.UTF-8")));
    assert!(meta.starts_with("instance-id: \"web-1.v2\"\n"), "{meta}");
}

#[tokio::test]
async fn user_data_setting_a_key_a_field_sets_is_refused_and_nothing_is_left() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest {
        packages: vec!["nginx".into()],
        user_data: Some("packages: [curl]\n".into()),
        ..CloudInitRequest::default()
    };
    let err = env.ops.create(CreateRequest { cloud_init: Some(ci), ..req("clash") }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cloud_init.user_data: sets \"packages\", which cloud_init.packages sets too; set it in one place"
    );
    assert!(!env.dir.path().join("state/vms/clash").exists() && !env.dir.path().join("disks/clash.qcow2").exists());
}

#[tokio::test]
async fn write_files_outside_the_limits_name_the_file() {
    let env = storage_env(serde_json::json!({}));
    let ci = CloudInitRequest {
        write_files: vec![kvm_mcp::provision::cloudinit::WriteFile { path: "etc/x".into(), ..Default::default() }],
        ..CloudInitRequest::default()
    };
    let err = env.ops.create(CreateRequest { cloud_init: Some(ci), ..req("wf") }).await.unwrap_err();
    assert!(err.to_string().starts_with("cloud_init.write_files[0].path: \"etc/x\" is not an absolute"), "{err}");
}

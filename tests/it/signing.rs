//! Signed policies through the real broker: with trusted keys configured,
//! an unsigned, tampered or untrusted policy is rejected and the previous
//! one stays; a policy signed by either of two trusted keys is accepted.

use std::time::Duration;

use clearance::policy::signing::{generate, PolicySigner, KEY_ID_HEADER, SIGNATURE_HEADER};
use clearance::policy::EXAMPLE_POLICY;
use clearance::rollout;

use crate::harness::*;

const SIXTY: Duration = Duration::from_secs(60);

fn with_version(v: &str) -> String {
    EXAMPLE_POLICY.replace("version = \"2026.12.1\"", &format!("version = \"{v}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_policies_signed_by_a_trusted_key_are_activated() {
    let (secret_a, public_a, id_a) = generate();
    let (secret_b, public_b, id_b) = generate();
    let (secret_c, _, id_c) = generate();
    let (a, b, c) = (
        PolicySigner::from_text(&secret_a).unwrap(),
        PolicySigner::from_text(&secret_b).unwrap(),
        PolicySigner::from_text(&secret_c).unwrap(),
    );
    let mut cfg = test_config("signing");
    cfg.policy.trusted_keys = vec![public_a, public_b];
    create_topics(&cfg).await;
    let (h, stop) = start_engine(&cfg).await;
    let s = wait_status(&h, "ready", SIXTY, |s| s["ready"] == true).await;
    assert_eq!(
        s["policy"]["rollout"]["trusted_keys"],
        serde_json::json!([id_a.clone(), id_b.clone()]),
        "{s}"
    );

    // Signed by A: accepted, and the activation names the key.
    rollout::publish_signed(&cfg, &with_version("2026.12.10"), "v10", Some(&a))
        .await
        .expect("publish");
    let s = wait_status(&h, "v10 active", SIXTY, |s| {
        s["policy"]["version"] == "2026.12.10"
    })
    .await;
    let src = s["policy"]["rollout"]["active_source"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(src.ends_with(&format!("signed by {id_a}")), "{s}");

    // Unsigned, tampered, untrusted: each rejected, v10 stays.
    rollout::publish_text(&cfg, &with_version("2026.12.11"), "v11")
        .await
        .expect("publish");
    let signed_text = with_version("2026.12.12");
    let (kid, sig) = a.sign(signed_text.as_bytes());
    let tampered = signed_text.replace("\"MO\"", "\"MO\", \"SG\"");
    assert_ne!(tampered, signed_text);
    rollout::publish_with_headers(
        &cfg,
        "example@2026.12.12",
        tampered.as_bytes(),
        &[
            (KEY_ID_HEADER, kid.as_bytes()),
            (SIGNATURE_HEADER, sig.as_bytes()),
        ],
    )
    .await
    .expect("publish");
    rollout::publish_signed(&cfg, &with_version("2026.12.13"), "v13", Some(&c))
        .await
        .expect("publish");
    let s = wait_status(&h, "three rejections", SIXTY, |s| {
        s["policy"]["rollout"]["rejected"] == 3
    })
    .await;
    assert_eq!(
        s["policy"]["version"], "2026.12.10",
        "the previous policy stays: {s}"
    );
    let last = s["policy"]["rollout"]["last_rejection"]
        .as_str()
        .unwrap_or("");
    assert!(
        last.contains(&format!(
            "signed by key {id_c}, which is not in policy.trusted_keys"
        )),
        "{s}"
    );
    let (_, metrics) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .expect("metrics");
    for reason in ["unsigned", "bad_signature", "untrusted_key"] {
        let line = format!("clearance_policy_signature_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "missing {line}");
    }

    // Signed by B (the second trusted key, as in a rotation): accepted.
    rollout::publish_signed(&cfg, &with_version("2026.12.14"), "v14", Some(&b))
        .await
        .expect("publish");
    let s = wait_status(&h, "v14 active", SIXTY, |s| {
        s["policy"]["version"] == "2026.12.14"
    })
    .await;
    let src = s["policy"]["rollout"]["active_source"]
        .as_str()
        .unwrap_or("");
    assert!(src.ends_with(&format!("signed by {id_b}")), "{s}");

    // The CLI: `policy sign` writes a detached signature that `policy
    // publish --signature` publishes; `policy keygen` writes an owner-only key.
    let dir = std::env::temp_dir().join(unique("signing"));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("a.key");
    std::fs::write(&key_file, format!("{secret_a}\n")).unwrap();
    let policy_file = dir.join("v15.toml");
    std::fs::write(&policy_file, with_version("2026.12.15")).unwrap();
    let conf = dir.join("c.toml");
    std::fs::write(&conf, toml::to_string(&cfg).unwrap()).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clearance"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run clearance");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    run(&[
        &os("policy"),
        &os("sign"),
        policy_file.as_os_str(),
        &os("--key"),
        key_file.as_os_str(),
    ]);
    let sig_file = dir.join("v15.toml.sig");
    let sig = std::fs::read_to_string(&sig_file).unwrap();
    assert!(sig.starts_with(&format!("{id_a}\n")), "{sig}");
    run(&[
        &os("policy"),
        &os("publish"),
        &os("--config"),
        conf.as_os_str(),
        policy_file.as_os_str(),
        &os("--signature"),
        sig_file.as_os_str(),
    ]);
    let s = wait_status(&h, "v15 active", SIXTY, |s| {
        s["policy"]["version"] == "2026.12.15"
    })
    .await;
    assert!(
        s["policy"]["rollout"]["active_source"]
            .as_str()
            .unwrap_or("")
            .ends_with(&id_a),
        "{s}"
    );
    let new_key = dir.join("new.key");
    let out = run(&[
        &os("policy"),
        &os("keygen"),
        &os("--out"),
        new_key.as_os_str(),
    ]);
    assert!(out.contains("key id: ed25519:"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&new_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the signing key is owner-only");
    assert!(PolicySigner::from_text(&std::fs::read_to_string(&new_key).unwrap()).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
    stop_engine(h, stop).await;
}

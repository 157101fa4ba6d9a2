use super::*;

fn parse(args: &[&str]) -> Result<MountArgs, String> {
    MountArgs::parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
}

#[test]
fn options_from_mount_are_understood() {
    let args = parse(&[
        "/dfly",
        "-o",
        "rw,socket=/run/x.sock,timeout=2.5,nosuid,x-systemd.automount,metrics_addr=none",
    ])
    .unwrap();
    assert_eq!(args.mountpoint, PathBuf::from("/dfly"));
    assert_eq!(args.socket, PathBuf::from("/run/x.sock"));
    assert_eq!(args.timeout, 2.5);
    assert_eq!(args.metrics_addr, MetricsAddr(None));
    assert_eq!(args.whole_after_mib, WholeAfter::Auto, "the default");
    let args = parse(&["/dfly", "-o", "whole_after_mib=16,nopassthrough"]).unwrap();
    assert_eq!(args.whole_after_mib, WholeAfter::Bytes(16 << 20));
    assert!(!args.passthrough);
    let args = parse(&["/dfly", "-owhole_after_mib=auto,direct_io=0"]).unwrap();
    assert_eq!(args.whole_after_mib, WholeAfter::Auto);
    assert!(!args.direct_io);
}

#[test]
fn flags_and_options_are_the_same_and_options_win() {
    let args = parse(&["/dfly", "--timeout", "3", "-o", "timeout=4", "--foreground"]).unwrap();
    assert_eq!(args.timeout, 4.0);
    assert!(args.foreground);
    let args = parse(&["/dfly", "--passthrough", "false"]).unwrap();
    assert!(!args.passthrough);
    assert!(!parse(&["/dfly", "--no-passthrough"]).unwrap().passthrough);
}

#[test]
fn the_mount_helper_ignores_what_mount_passes_for_itself() {
    let helper = |args: &[&str]| {
        MountArgs::parse_helper(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    };
    let args = helper(&["dffs", "/dfly", "-n", "-o", "rw,socket=/s"]).unwrap();
    assert_eq!(args.mountpoint, PathBuf::from("/dfly"));
    assert_eq!(args.socket, PathBuf::from("/s"));
    assert!(!args.foreground, "mount's -f means fake, not foreground");
    assert!(helper(&["dffs"]).unwrap_err().contains("usage"));
}

#[test]
fn a_config_file_sets_options_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dffs.toml");
    std::fs::write(
        &file,
        "socket = \"/run/y.sock\"\ntimeout = 7\npassthrough = false\nwhole_after_mib = \"auto\"\n",
    )
    .unwrap();
    let config = format!("config={}", file.display());
    let args = parse(&["/dfly", "-o", &config]).unwrap();
    assert_eq!(args.socket, PathBuf::from("/run/y.sock"));
    assert_eq!(args.timeout, 7.0);
    assert!(!args.passthrough);
    assert_eq!(args.whole_after_mib, WholeAfter::Auto);
    let args = parse(&[
        "/dfly",
        "--config",
        &file.display().to_string(),
        "--timeout",
        "1",
    ])
    .unwrap();
    assert_eq!(args.timeout, 1.0);
    std::fs::write(&file, "whole_after_mib = 3\n").unwrap();
    let args = parse(&["/dfly", "-o", &config]).unwrap();
    assert_eq!(args.whole_after_mib, WholeAfter::Bytes(3 << 20));
    std::fs::write(&file, "speed = 1\n").unwrap();
    let err = parse(&["/dfly", "-o", &config]).unwrap_err();
    assert!(
        err.contains("'speed'") && err.contains("dffs.toml"),
        "{err}"
    );
}

#[test]
fn bad_options_are_named() {
    let err = parse(&["/dfly", "-o", "socket=/x,speed=fast"]).unwrap_err();
    assert!(err.contains("'speed=fast'"), "{err}");
    assert!(
        err.contains("readahead_mib"),
        "the known options are listed: {err}"
    );
    let err = parse(&["/dfly", "-o", "timeout=-1"]).unwrap_err();
    assert!(err.contains("timeout") && err.contains("'-1'"), "{err}");
    let err = parse(&["/dfly", "-o", "whole_after_mib=soon"]).unwrap_err();
    assert!(err.contains("'soon'") && err.contains("or auto"), "{err}");
    let err = parse(&["/dfly", "-o", "foreground=yes"]).unwrap_err();
    assert!(err.contains("'foreground=yes'"), "{err}");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever mount(8) or fstab passes is taken or refused with a
        /// message, never a panic, and a taken timeout is always usable.
        #[test]
        fn any_mount_options_are_taken_or_refused(options in "[a-z_=,.0-9/ -]{0,80}") {
            if let Ok(args) = parse(&["/dfly", "-o", &options]) {
                prop_assert!(args.timeout > 0.0 && args.timeout.is_finite());
            }
        }
    }
}

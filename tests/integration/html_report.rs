//! `run --html`: a real lab's report opened in headless Chromium, which must
//! load it without console errors and show every scenario with its verdict.
//! The page and a screenshot stay in the test's target folder for a look.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const INSTALL: &str = "apt-get install -y chromium";

/// Debian's `chromium`, or a failure that says how to get it: a missing
/// browser must not turn this test into a silent pass.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test opens the HTML report in headless Chromium, which is missing: `{INSTALL}`"
        )
    })
}

/// Runs headless Chromium on `page` with `args`, killed after a minute (a
/// hung browser must fail the test, not stall it). Network fetches go to a
/// closed port, so the page cannot lean on anything online.
fn headless(browser: &Path, profile: &Path, page: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--proxy-server=127.0.0.1:9",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().expect("chromium status").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("chromium output")
}

/// Console messages Chromium logged for the page (script errors, failed
/// resources): `[…:INFO:CONSOLE:1] "Uncaught …", source: file://…`.
fn console_messages(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect()
}

#[test]
fn html_report_opens_in_chromium_with_every_scenario() {
    let browser = chromium();
    let lab = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "html",
        |t| t,
    );
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html_report");
    std::fs::create_dir_all(&keep).expect("output folder");
    let page = keep.join("report.html");
    let _ = std::fs::remove_file(&page);
    let scenarios = ["setnx", "no-lock"];
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        scenarios[0],
        "--scenario",
        scenarios[1],
        "--format",
        "json",
        "--html",
        page.to_str().unwrap(),
    ]);
    // A verdict, not an input or environment error.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
    let report = json_report(&out);
    assert_nothing_left(&lab.name);

    let html = std::fs::read_to_string(&page).expect("the HTML report was written");
    // Self-contained: no script, stylesheet, font or image to fetch.
    for banned in ["<script", "<link", "src=", "@import", "url(", "<iframe"] {
        assert!(!html.contains(banned), "the page references `{banned}`");
    }
    for scheme in ["http://", "https://"] {
        assert!(
            !html.contains(&format!("\"{scheme}")),
            "an attribute points at {scheme}"
        );
    }

    let profile = tempfile::tempdir().expect("browser profile");
    // The console check must be able to fail: a page with a script error
    // is caught on this Chromium.
    let scratch = tempfile::tempdir().expect("scratch folder");
    let broken = scratch.path().join("broken.html");
    std::fs::write(
        &broken,
        "<!DOCTYPE html><p>x</p><script>missing();</script>",
    )
    .expect("write page");
    let out = headless(&browser, profile.path(), &broken, &["--dump-dom"]);
    assert!(
        console_messages(&out)
            .iter()
            .any(|l| l.contains("Uncaught")),
        "chromium did not report a script error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = headless(&browser, profile.path(), &page, &["--dump-dom"]);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert_eq!(
        console_messages(&dom),
        Vec::<String>::new(),
        "console errors"
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("infralab report"), "{dom}");
    // Every scenario is in the rendered document with the verdict the JSON
    // report gives it, and has its charts.
    for name in scenarios {
        let verdict = scenario(&report, name)["verdict"]
            .as_str()
            .expect("verdict");
        let id = format!("id=\"lab--{}--{name}\"", lab.name);
        let start = dom
            .find(&id)
            .unwrap_or_else(|| panic!("scenario {name} ({id}) is not in the page"));
        let section = &dom[start..];
        let section = &section[..section.find("</section>").expect("section ends")];
        let badge = format!("<h3>{name} <span class=\"badge {verdict}\">");
        let label = format!("</span> {}</span>", verdict.to_uppercase());
        assert!(
            section.contains(&badge) && section.contains(&label),
            "{name} should show {verdict}: {section}"
        );
        assert!(
            section.contains("<svg"),
            "{name} has no timeline: {section}"
        );
    }
    assert!(dom.matches("<svg").count() >= 4, "charts are missing");

    // A screenshot proves the page renders; kept beside the page.
    let shot = keep.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        &browser,
        profile.path(),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
    );
    assert_eq!(
        console_messages(&out),
        Vec::<String>::new(),
        "console errors"
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "screenshot of {size} bytes: {}", text(&out));
}

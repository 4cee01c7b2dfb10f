//! The command line, declared with clap: every flag in one place, with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::images::Source;
use crate::report::terminal::ColorChoice;

const EXAMPLES: &str = "\
Examples:
  infralab list                               labs by section
  infralab show distributed-locking           briefing: question, services, scenarios
  infralab run distributed-locking            start, run every scenario, check, tear down
  infralab run --all --junit out.xml          the whole catalog, as CI runs it
  infralab up distributed-locking             keep services running, print connection strings
  infralab down distributed-locking           remove them
  infralab validate labs/my-lab.yaml          check a lab file without Docker
  infralab run distributed-locking --solution 'python3 my_lock.py'
                                              check your own program (a challenge)
  infralab validate --solutions               every shipped solution gets its declared verdict

Exit codes: 0 passed, 1 a check failed, 2 bad input, 3 environment (Docker, images, timeouts).";

/// Live system-design labs on real infrastructure: starts real services in
/// Docker, runs an exercise against them, injects faults and checks what was
/// observed against the lab's expectations.
#[derive(Debug, Parser)]
#[command(name = "infralab", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Folder of lab files [default: ./labs, else the catalog shipped with infralab]
    #[arg(
        long = "labs",
        global = true,
        env = "INFRALAB_LABS",
        value_name = "DIR"
    )]
    pub labs_dir: Option<PathBuf>,
    /// When to colour output (NO_COLOR and non-terminals turn it off in auto)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// More log output (-v debug, -vv trace); RUST_LOG works too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `run` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for people.
    Text,
    /// One JSON document on stdout, with every observation.
    Json,
}

/// Image choice shared by the commands that start services.
#[derive(Debug, Args, Clone)]
pub struct ImageArgs {
    /// Where images come from: auto (present, else pull, else build locally), official, local
    #[arg(long, value_enum, env = "INFRALAB_IMAGES", default_value_t = Source::Auto)]
    pub images: Source,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the labs, grouped by section
    #[command(after_help = "Example:\n  infralab list --format json")]
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show a lab's briefing: the question, services, scenarios, and the exercise's parameters, observations and milestones
    #[command(
        after_help = "Examples:\n  infralab show distributed-locking\n  infralab show distributed-locking --format json | jq .exercise.params"
    )]
    Show {
        /// Lab name, file stem or path
        lab: String,
        /// Text for people, or JSON with the exercise's parameters, observations and milestones
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run labs: start services, run every scenario, check expectations, tear down
    #[command(
        after_help = "Examples:\n  infralab run distributed-locking\n  infralab run distributed-locking --scenario setnx\n  infralab run --all --format json --junit report.xml\n  infralab run distributed-locking --repeat 20   # steady verdicts? counts per expectation\n  infralab run --all --jobs 2                    # two labs at a time"
    )]
    Run {
        /// Lab names, file stems or paths
        labs: Vec<String>,
        /// Run every lab in the catalog
        #[arg(long, conflicts_with = "labs")]
        all: bool,
        /// Only these scenarios (repeatable)
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Report format on stdout (progress always goes to stderr)
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also write a JUnit XML report (one testcase per scenario)
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Also write the JSON report to a file
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also write a self-contained HTML report (tables, timelines, charts)
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Deadline for one scenario's exercise
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        scenario_timeout: std::time::Duration,
        /// Run every scenario N times on the same services; an expectation whose verdict changes is flaky (exit 1)
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: u32,
        /// Labs run at once, each on its own network and namespace [default: the machine's cores, at most 4]
        #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32))]
        jobs: Option<u32>,
        /// Check your own program on the lab's challenge scenarios: a solution the lab declares (by name) or a shell command
        #[arg(long, value_name = "NAME_OR_COMMAND", conflicts_with = "all")]
        solution: Option<String>,
        #[command(flatten)]
        images: ImageArgs,
    },
    /// Start a lab's services and leave them running; prints connection strings
    #[command(
        after_help = "Example:\n  infralab up distributed-locking && redis-cli -u redis://127.0.0.1:PORT"
    )]
    Up {
        /// Lab name, file stem or path
        lab: String,
        #[command(flatten)]
        images: ImageArgs,
    },
    /// Remove the services `up` started for a lab
    #[command(after_help = "Example:\n  infralab down distributed-locking")]
    Down {
        /// Lab name, file stem or path
        lab: String,
    },
    /// Remove containers and networks of runs whose process is gone
    #[command(
        after_help = "Examples:\n  infralab gc\n  infralab gc --all   # also `up` runs and runs still in progress"
    )]
    Gc {
        /// Remove every infralab resource, kept `up` runs included
        #[arg(long)]
        all: bool,
    },
    /// Check lab files without Docker (all labs when no file is given); with --solutions, run every declared solution of the challenges
    #[command(
        after_help = "Examples:\n  infralab validate\n  infralab validate labs/messaging/*.yaml\n  infralab validate --solutions distributed-locking --repeat 3\n  infralab validate --solutions event-driven-pipeline --jobs 2"
    )]
    Validate {
        /// Lab files (with --solutions: lab names, file stems or paths; all challenges when none)
        files: Vec<PathBuf>,
        /// Run every solution the challenges declare on their challenge scenarios (Docker) and check each got its declared verdict
        #[arg(long)]
        solutions: bool,
        /// With --solutions: run every challenge scenario N times per solution
        #[arg(long, value_name = "N", default_value_t = 1, requires = "solutions", value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: u32,
        /// With --solutions: the matrix as text, or JSON on stdout
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// With --solutions: solutions run at once, each on its own services [default: 1, as verdicts that hang on timing were proven one at a time]
        #[arg(long, short = 'j', value_name = "N", requires = "solutions", value_parser = clap::value_parser!(u32).range(1..=32))]
        jobs: Option<u32>,
        #[command(flatten)]
        images: ImageArgs,
    },
    /// Local images: which are present, build them from Debian packages
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Check the environment: Docker, images, mmdebstrap
    Doctor,
    /// Run the project's own backend inside a lab container (the `agent` kind)
    Serve {
        /// Role to play
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::agent::ROLES))]
        role: String,
        /// Port to listen on
        #[arg(long, default_value_t = crate::agent::DEFAULT_PORT)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Show each kind's official and local image and whether they are present
    List,
    /// Build local images from Debian packages (reuses an unchanged recipe)
    #[command(
        after_help = "Examples:\n  infralab images build redis\n  infralab images build --all"
    )]
    Build {
        /// Kinds to build
        kinds: Vec<String>,
        /// Every kind
        #[arg(long, conflicts_with = "kinds")]
        all: bool,
        /// Rebuild even if the recipe is unchanged
        #[arg(long)]
        force: bool,
    },
}

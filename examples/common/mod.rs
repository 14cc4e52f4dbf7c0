//! Flag parsing shared by the examples: `--name value` pairs, each flag declared with its
//! default and help, unknown flags and bad values rejected with a clear message.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;

pub struct Flags {
    program: &'static str,
    about: &'static str,
    specs: Vec<(&'static str, &'static str, &'static str)>,
    given: BTreeMap<String, String>,
}

impl Flags {
    /// Declares the flags: `(name, default, help)`.
    pub fn new(
        program: &'static str,
        about: &'static str,
        specs: &[(&'static str, &'static str, &'static str)],
    ) -> Self {
        Flags {
            program,
            about,
            specs: specs.to_vec(),
            given: BTreeMap::new(),
        }
    }

    fn usage(&self) -> String {
        let mut s = format!(
            "{}\n\nUsage: cargo run --release --example {} -- [FLAGS]\n\n",
            self.about, self.program
        );
        for (name, default, help) in &self.specs {
            s += &format!("  --{name:<16} {help} (default: {default})\n");
        }
        s
    }

    /// Parses the command line; prints usage and exits on `--help` or an error.
    pub fn parse(mut self) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                print!("{}", self.usage());
                std::process::exit(0);
            }
            let Some(name) = a.strip_prefix("--") else {
                self.fail(&format!("unexpected argument '{a}'"));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (name.to_string(), None),
            };
            if !self.specs.iter().any(|s| s.0 == name) {
                self.fail(&format!("unknown flag --{name}"));
            }
            let value = value
                .or_else(|| it.next())
                .unwrap_or_else(|| self.fail(&format!("--{name} needs a value")));
            self.given.insert(name, value);
        }
        self
    }

    fn fail(&self, msg: &str) -> ! {
        eprintln!("error: {msg}\n\n{}", self.usage());
        std::process::exit(2);
    }

    /// The raw value of `name` (given or default).
    pub fn raw(&self, name: &str) -> String {
        self.given.get(name).cloned().unwrap_or_else(|| {
            self.specs
                .iter()
                .find(|s| s.0 == name)
                .unwrap_or_else(|| panic!("flag --{name} not declared"))
                .1
                .to_string()
        })
    }

    /// The value of `name` parsed as `T`; exits with a message naming the flag if it does not parse.
    pub fn get<T: FromStr>(&self, name: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(name);
        raw.parse()
            .unwrap_or_else(|e| self.fail(&format!("--{name} {raw}: {e}")))
    }

    /// Whether the user gave `name` explicitly.
    pub fn given(&self, name: &str) -> bool {
        self.given.contains_key(name)
    }
}

/// Median of a list of durations in seconds.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

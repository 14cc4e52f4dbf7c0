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

/// The data flags both examples take, after their own.
#[rustfmt::skip]
pub const DATA_FLAGS: &[(&str, &str, &str)] = &[
    ("dataset", "mnist", "mnist, fashion, or shapes (coloured shapes drawn from --seed: 32x32 RGB, 4 classes)"),
    ("data-dir", "", "folder with the four IDX .gz files (default: data/mnist, $LATENT_DATA_DIR/mnist, or Debian's Fashion-MNIST folder)"),
    ("data", "", "your own images instead: a folder (one subfolder per class, or flat), a .npy file or a .npz archive"),
    ("labels", "", "the labels' .npy file, with --data images.npy"),
    ("size", "", "resize --data images to HxW (or S for SxS), scaling to cover and cropping the centre"),
    ("colour", "files", "--data images as the files are, or grey, or rgb"),
    ("test-fraction", "0.1", "the part of --data (or of shapes) held out as the test set, drawn from --seed"),
];

/// A training and a test set, with a name for messages and titles.
pub struct Data {
    pub train: latent::data::Dataset,
    pub test: latent::data::Dataset,
    pub name: String,
}

/// The data the flags ask for: MNIST or Fashion-MNIST's own split, the generated shapes,
/// or `--data` (an image folder, a `.npy` file, a `.npz` archive) split by
/// `--test-fraction` from `--seed`.
pub fn load_data(flags: &Flags) -> latent::Result<Data> {
    use latent::data::{Colour, Dataset, DatasetKind, ImageFolder, NpyImages, Split};
    use latent::Error;
    let seed: u64 = flags.get("seed");
    let fraction: f64 = flags.get("test-fraction");
    let path = flags.raw("data");
    if path.is_empty() {
        if flags.raw("dataset") == "shapes" {
            let all = latent::data::shapes(1250, 32, seed)?;
            let (train, test) = all.split(fraction, seed)?;
            return Ok(Data {
                train,
                test,
                name: "shapes".into(),
            });
        }
        let kind: DatasetKind = match flags.raw("dataset").as_str() {
            name @ ("mnist" | "fashion" | "fashion-mnist" | "fashion_mnist") => name.parse()?,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--dataset {other}: expected mnist, fashion or shapes (or --data PATH for your own)"
                )))
            }
        };
        let dir = Some(flags.raw("data-dir"))
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from);
        let train = Dataset::load(kind, dir.as_deref(), Split::Train)?;
        let test = Dataset::load(kind, dir.as_deref(), Split::Test)?;
        return Ok(Data {
            train,
            test,
            name: kind.name().into(),
        });
    }
    let path = std::path::PathBuf::from(path);
    let size = match flags.raw("size").as_str() {
        "" => None,
        s => {
            let parse = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0);
            let (h, w) = s.split_once('x').unwrap_or((s, s));
            Some(
                parse(h)
                    .zip(parse(w))
                    .ok_or_else(|| Error::InvalidArgument(format!("--size {s}: expected HxW or S, in pixels")))?,
            )
        }
    };
    let colour = match flags.raw("colour").as_str() {
        "files" => Colour::AsFiles,
        "grey" | "gray" => Colour::Grey,
        "rgb" => Colour::Rgb,
        other => {
            return Err(Error::InvalidArgument(format!(
                "--colour {other}: expected files, grey or rgb"
            )))
        }
    };
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let all = if path.is_dir() {
        let mut folder = ImageFolder::new(&path).colour(colour);
        if let Some((h, w)) = size {
            folder = folder.resize_and_crop(h, w);
        }
        folder.load()?
    } else {
        if size.is_some() || colour != Colour::AsFiles {
            return Err(Error::InvalidArgument(
                "--size and --colour apply to a folder of images, not to arrays".into(),
            ));
        }
        match ext.as_deref() {
            Some("npy") => {
                let mut npy = NpyImages::npy(&path);
                if !flags.raw("labels").is_empty() {
                    npy = npy.labels(flags.raw("labels"));
                }
                npy.load()?
            }
            Some("npz") => NpyImages::npz(&path).load()?,
            _ => return Err(Error::data(&path, "is not a folder, a .npy file or a .npz archive")),
        }
    };
    let (train, test) = all.split(fraction, seed)?;
    let name = path
        .file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Data { train, test, name })
}

//! The inspector's page: what the gateway serves to a checkpoint
//! inspector's browser, without the HTTP (that is `http::inspect`).
//!
//! * The page itself: static files under `gateway/assets/inspect/`, compiled
//!   into the binary so that the page needs nothing but the gateway at run
//!   time, and the security headers they are served with.
//! * The checkpoint list the page offers to choose from, read from the
//!   policy of the running snapshot.
//! * Reading a QR code out of a camera frame. Chromium on Linux (and Firefox)
//!   has no `BarcodeDetector`, so the page sends frames here and `rqrr`
//!   finds and decodes the code. The frame is checked against hard bounds
//!   before any pixel is looked at, and decoding is CPU work: the HTTP layer
//!   runs it on the blocking pool with a bounded number of slots.
//!
//! See docs/INSPECTOR.md.

use crate::policy::Policy;
use serde::Serialize;

/// One embedded file of the page.
#[derive(Debug)]
pub struct Asset {
    /// The name under `/inspect/` (`""` is the page itself).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page and everything it loads. Nothing comes from another origin.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/inspect/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/inspect/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/inspect/app.css"),
    },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_bytes!("../../assets/inspect/icon.svg") },
];

/// The page's file called `name` (the part of the path after `/inspect/`).
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The Content-Security-Policy of the page: its own scripts, styles, images
/// and API only; no inline script or style, no plugins, no framing, no form
/// posted elsewhere. The camera stream is attached with `srcObject`, which
/// is no fetch and needs no `media-src`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Headers sent with every file of the page.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    // The camera is the page's own; nothing else on it may ask.
    ("permissions-policy", "camera=(self), microphone=(), geolocation=()"),
    // The files change with the binary: revalidate rather than serve an old
    // page against a new API.
    ("cache-control", "no-cache"),
];

/// A checkpoint as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckpointInfo {
    pub id: String,
    pub class: String,
    pub region: String,
    /// A scan there must carry a temperature reading.
    pub measures_temperature: bool,
    /// Colours that pass there (`green`, and `yellow` at a fever clinic).
    pub admits: Vec<&'static str>,
    /// A fever clinic admits fever readings.
    pub admits_fever: bool,
    /// The region's fever threshold, so the page can say what "fever" means.
    pub fever_threshold_c: f64,
}

/// `GET /v1/checkpoints`: every configured checkpoint, in configuration
/// order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointInfo>,
}

impl CheckpointList {
    pub fn of(policy: &Policy) -> CheckpointList {
        let checkpoints = policy
            .checkpoints()
            .iter()
            .filter_map(|c| policy.place(&c.id))
            .map(|p| CheckpointInfo {
                id: p.checkpoint.id.clone(),
                class: p.class.name.clone(),
                region: p.region.name.clone(),
                measures_temperature: p.class.requires_temperature,
                admits: crate::color::Color::ALL
                    .iter()
                    .filter(|c| p.class.admit[c.index()])
                    .map(|c| c.as_str())
                    .collect(),
                admits_fever: p.class.admit_fever,
                fever_threshold_c: p.region.fever_threshold_c,
            })
            .collect();
        CheckpointList { checkpoints }
    }
}

/// Largest frame body accepted, in bytes: a 1280 × 800 grey frame, or a PNG
/// of about that. The page scales frames down to at most 960 pixels a side.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest frame side, in pixels, for either format.
pub const MAX_FRAME_SIDE: u32 = 2048;

/// Largest decoded frame, in pixels (a full-HD picture fits): bounds the
/// decoder's memory whatever a PNG claims.
pub const MAX_FRAME_PIXELS: u64 = 2_500_000;

/// How a frame is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// One byte of luminance a pixel, row by row, no header (what the page
    /// sends: no image codec on either side).
    Gray { width: u32, height: u32 },
    /// A PNG file (what `healthgate issue --qr` writes; handy with curl).
    Png,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("width and height must be between 1 and {MAX_FRAME_SIDE}")]
    BadDimensions,
    #[error("a {width} x {height} grey frame is {expected} bytes, the body has {got}")]
    SizeMismatch { width: u32, height: u32, expected: u64, got: usize },
    #[error("frame over {MAX_FRAME_PIXELS} pixels or {MAX_FRAME_SIDE} pixels a side")]
    TooLarge,
    #[error("not a readable PNG: {0}")]
    BadPng(String),
}

/// A frame's pixels, checked against the bounds.
struct Gray {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

fn check_side(width: u32, height: u32) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::BadDimensions);
    }
    if width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE || u64::from(width) * u64::from(height) > MAX_FRAME_PIXELS {
        return Err(FrameError::TooLarge);
    }
    Ok(())
}

fn gray(format: FrameFormat, body: &[u8]) -> Result<Gray, FrameError> {
    match format {
        FrameFormat::Gray { width, height } => {
            check_side(width, height)?;
            let expected = u64::from(width) * u64::from(height);
            if body.len() as u64 != expected {
                return Err(FrameError::SizeMismatch { width, height, expected, got: body.len() });
            }
            Ok(Gray { width: width as usize, height: height as usize, pixels: body.to_vec() })
        }
        FrameFormat::Png => {
            let mut reader = image::ImageReader::with_format(std::io::Cursor::new(body), image::ImageFormat::Png);
            // Refuse a small file that claims a huge picture before any
            // pixel is inflated.
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(MAX_FRAME_SIDE);
            limits.max_image_height = Some(MAX_FRAME_SIDE);
            limits.max_alloc = Some(MAX_FRAME_PIXELS * 8);
            reader.limits(limits);
            let img = reader.decode().map_err(|e| match e {
                image::ImageError::Limits(_) => FrameError::TooLarge,
                other => FrameError::BadPng(other.to_string()),
            })?;
            check_side(img.width(), img.height())?;
            let luma = img.into_luma8();
            let (w, h) = luma.dimensions();
            Ok(Gray { width: w as usize, height: h as usize, pixels: luma.into_raw() })
        }
    }
}

/// The text of the first QR code found in the frame, or `None` when there
/// is none that decodes (the normal answer while the camera looks around).
///
/// CPU work of milliseconds to tens of milliseconds: call it off the async
/// workers. A frame outside the bounds is an error before any decoding.
pub fn read_qr(format: FrameFormat, body: &[u8]) -> Result<Option<String>, FrameError> {
    let frame = gray(format, body)?;
    // The decoder is third-party code fed with network input: should it
    // ever panic, that frame reads as "no code" instead of taking the
    // request down with it.
    let found = std::panic::catch_unwind(|| {
        let Gray { width, height, pixels } = &frame;
        let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(*width, *height, |x, y| pixels[y * *width + x]);
        prepared.detect_grids().into_iter().find_map(|grid| grid.decode().ok().map(|(_, text)| text))
    });
    match found {
        Ok(text) => Ok(text),
        Err(_) => {
            tracing::warn!(width = frame.width, height = frame.height, "QR decoder panicked on a frame");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcode::{EcLevel, QrCode};

    const TEXT: &str = "HG1:THE QUICK BROWN FOX 0123456789 $%*+-./:";

    /// A grey frame of `w` × `h` with the code drawn at 4 pixels a module
    /// at (`x0`, `y0`), on a mid-grey background like a real scene.
    fn frame(w: u32, h: u32, x0: u32, y0: u32) -> Vec<u8> {
        let code = QrCode::with_error_correction_level(TEXT.as_bytes(), EcLevel::M).unwrap();
        let img = code.render::<image::Luma<u8>>().quiet_zone(true).module_dimensions(4, 4).build();
        let mut out = vec![128u8; (w * h) as usize];
        for (x, y, p) in img.enumerate_pixels() {
            if x + x0 < w && y + y0 < h {
                out[((y + y0) * w + x + x0) as usize] = p.0[0];
            }
        }
        out
    }

    #[test]
    fn a_code_in_a_grey_frame_is_read() {
        let f = frame(640, 480, 150, 60);
        assert_eq!(read_qr(FrameFormat::Gray { width: 640, height: 480 }, &f).unwrap().as_deref(), Some(TEXT));
    }

    #[test]
    fn a_code_in_a_png_is_read() {
        let code = QrCode::with_error_correction_level(TEXT.as_bytes(), EcLevel::M).unwrap();
        let img = code.render::<image::Luma<u8>>().quiet_zone(true).module_dimensions(6, 6).build();
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert_eq!(read_qr(FrameFormat::Png, &png).unwrap().as_deref(), Some(TEXT));
    }

    #[test]
    fn a_frame_without_a_code_reads_as_none() {
        let blank = vec![200u8; 320 * 240];
        assert_eq!(read_qr(FrameFormat::Gray { width: 320, height: 240 }, &blank), Ok(None));
        // Half a code is no code.
        let f = frame(640, 480, 150, 60);
        let mut cut = f.clone();
        cut[..640 * 200].fill(128);
        assert_eq!(read_qr(FrameFormat::Gray { width: 640, height: 480 }, &cut), Ok(None));
    }

    #[test]
    fn frames_outside_the_bounds_are_refused_before_decoding() {
        let g = |width, height| FrameFormat::Gray { width, height };
        assert_eq!(read_qr(g(0, 10), &[]), Err(FrameError::BadDimensions));
        assert_eq!(read_qr(g(MAX_FRAME_SIDE + 1, 1), &[0]), Err(FrameError::TooLarge));
        assert_eq!(read_qr(g(2048, 2048), &[0]), Err(FrameError::TooLarge));
        assert!(matches!(read_qr(g(10, 10), &[0; 99]), Err(FrameError::SizeMismatch { expected: 100, got: 99, .. })));
        assert!(matches!(read_qr(FrameFormat::Png, b"not a png"), Err(FrameError::BadPng(_))));
    }

    #[test]
    fn a_small_png_claiming_a_huge_picture_is_refused() {
        // A valid PNG header for 30000 × 30000 pixels and nothing after it.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&30_000u32.to_be_bytes());
        ihdr.extend_from_slice(&30_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
        assert_eq!(read_qr(FrameFormat::Png, &png), Err(FrameError::TooLarge));
    }

    #[test]
    fn the_page_and_its_files_are_embedded() {
        let page = std::str::from_utf8(asset("").unwrap().body).unwrap();
        for name in ["app.js", "app.css", "icon.svg"] {
            assert!(asset(name).is_some(), "{name}");
            assert!(page.contains(name), "the page loads {name}");
        }
        // No inline script: the CSP forbids it and the page must not need it.
        assert!(!page.contains("<script>") && !page.contains("<style"), "inline script or style in the page");
        let handler = page.match_indices(" on").any(|(i, _)| {
            let rest = &page[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest.as_bytes().get(name) == Some(&b'=')
        });
        assert!(!handler && !page.contains("style="), "inline event handler or style attribute in the page");
        assert!(asset("../Cargo.toml").is_none() && asset("nope.js").is_none());
    }

    proptest::proptest! {
        #[test]
        fn random_frames_never_panic(w in 1u32..64, h in 1u32..64, seed: u64) {
            let mut x = seed | 1;
            let pixels: Vec<u8> = (0..w * h).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x & 0xff) as u8 }).collect();
            let _ = read_qr(FrameFormat::Gray { width: w, height: h }, &pixels);
            let _ = read_qr(FrameFormat::Png, &pixels);
        }
    }
}

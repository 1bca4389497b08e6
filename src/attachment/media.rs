//! What a file is and how it looks small: the content type sniffed from its first bytes
//! (never the client's claim), the file name cleaned for display, and thumbnails of pictures
//! (JPEG, PNG, WebP, a GIF's first frame) at most 320 px on their longer side. Decoding has
//! hard limits — dimensions read from the header first, then the decoder's own pixel and
//! allocation limits — so a decompression bomb is refused, not decoded.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;

/// The longer side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;
/// Bytes the sniffer looks at.
pub const SNIFF_BYTES: usize = 8192;
/// Longest file name kept, in bytes.
const NAME_MAX: usize = 255;

/// The content type of a file starting with `head`.
pub fn sniff(head: &[u8]) -> String {
    match infer::get(head) {
        Some(kind) => kind.mime_type().to_string(),
        None if looks_like_text(head) => "text/plain; charset=utf-8".to_string(),
        None => "application/octet-stream".to_string(),
    }
}

/// UTF-8 without NULs (a multi-byte character cut off at the end of `head` is fine).
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(_) => head.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return false,
    };
    !head.is_empty() && !head[..valid].contains(&0)
}

/// Whether the node makes thumbnails of this type (and serves it inline).
pub fn is_picture(content_type: &str) -> bool {
    matches!(content_type, "image/jpeg" | "image/png" | "image/gif" | "image/webp")
}

/// A file name fit to show and to put in a Content-Disposition: no directories, no control
/// characters, at most 255 bytes; "file" when nothing is left.
pub fn clean_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = base.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_string();
    while name.len() > NAME_MAX {
        name.pop();
    }
    if name.is_empty() || name == "." || name == ".." { "file".to_string() } else { name }
}

/// How big a picture may be.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    pub max_side: u32,
    pub max_pixels: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The picture is larger than the limits (a decompression bomb, or just too big).
    #[error("{0}")]
    TooLarge(String),
    /// The bytes do not decode as the picture they claim to be.
    #[error("the picture could not be decoded: {0}")]
    Undecodable(String),
}

/// A picture's dimensions (as shown: after its EXIF orientation) and its thumbnail.
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, MediaError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::Undecodable(e.to_string()))
}

/// Checks the picture's dimensions against `limits` from its header, then decodes it (under
/// the decoder's own limits) and makes the thumbnail: JPEG, or PNG when it has transparency.
/// CPU-bound: run it off the async workers.
pub fn thumbnail(bytes: &[u8], limits: ImageLimits) -> Result<Thumbnail, MediaError> {
    let (width, height) =
        reader(bytes)?.into_dimensions().map_err(|e| MediaError::Undecodable(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_side || height > limits.max_side || pixels > limits.max_pixels {
        return Err(MediaError::TooLarge(format!(
            "the picture is {width} × {height} pixels; the limit is {} per side and {} pixels in all",
            limits.max_side, limits.max_pixels
        )));
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    // RGBA at 16 bits per channel is 8 bytes a pixel; beyond that the decoder refuses.
    decoder_limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    let mut reader = reader(bytes)?;
    reader.limits(decoder_limits);
    let limited = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => {
            MediaError::TooLarge(format!("the picture exceeds the decoder's limits: {l}"))
        }
        other => MediaError::Undecodable(other.to_string()),
    };
    let mut decoder = reader.into_decoder().map_err(limited)?;
    // Phones store pictures sideways with an EXIF orientation: show them upright.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut picture = DynamicImage::from_decoder(decoder).map_err(limited)?;
    picture.apply_orientation(orientation);
    let (width, height) = (picture.width(), picture.height());
    let small = picture.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    let (bytes, content_type) = encode(small)?;
    Ok(Thumbnail { width, height, bytes, content_type })
}

fn encode(small: DynamicImage) -> Result<(Vec<u8>, &'static str), MediaError> {
    let mut out = Cursor::new(Vec::new());
    let content_type = if small.color().has_alpha() {
        small.to_rgba8().write_to(&mut out, ImageFormat::Png).map(|_| "image/png")
    } else {
        small.to_rgb8().write_to(&mut out, ImageFormat::Jpeg).map(|_| "image/jpeg")
    }
    .map_err(|e| MediaError::Undecodable(format!("thumbnail encoding failed: {e}")))?;
    Ok((out.into_inner(), content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    const LIMITS: ImageLimits = ImageLimits { max_side: 4000, max_pixels: 4_000_000 };

    #[test]
    fn thumbnails_keep_the_aspect_within_320() {
        let bytes = png(800, 400);
        assert_eq!(sniff(&bytes), "image/png");
        let t = thumbnail(&bytes, LIMITS).unwrap();
        assert_eq!((t.width, t.height), (800, 400));
        assert_eq!(t.content_type, "image/jpeg");
        let small = image::load_from_memory(&t.bytes).unwrap();
        assert_eq!((small.width(), small.height()), (320, 160));
    }

    fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([x as u8, y as u8, 90, 255])
        }));
        let img = if format == ImageFormat::Jpeg { DynamicImage::ImageRgb8(img.to_rgb8()) } else { img };
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn jpeg_webp_and_gif_are_thumbnailed_too() {
        for (format, mime) in [
            (ImageFormat::Jpeg, "image/jpeg"),
            (ImageFormat::WebP, "image/webp"),
            (ImageFormat::Gif, "image/gif"),
        ] {
            let bytes = encoded(format, 400, 640);
            assert_eq!(sniff(&bytes), mime);
            assert!(is_picture(mime));
            let t = thumbnail(&bytes, LIMITS).unwrap_or_else(|e| panic!("{mime}: {e}"));
            assert_eq!((t.width, t.height), (400, 640), "{mime}");
            let small = image::load_from_memory(&t.bytes).unwrap();
            assert_eq!((small.width(), small.height()), (200, 320), "{mime}");
        }
    }

    #[test]
    fn a_bomb_is_refused_from_its_header() {
        // A PNG header claiming 100,000 × 100,000 pixels, with almost nothing behind it.
        let mut bytes = png(1, 1);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        match thumbnail(&bytes, LIMITS) {
            Err(MediaError::TooLarge(m)) => assert!(m.contains("100000 × 100000"), "{m}"),
            other => panic!("expected TooLarge, got {:?}", other.map(|t| (t.width, t.height))),
        }
        let too_many = png(2100, 2000);
        assert!(matches!(thumbnail(&too_many, LIMITS), Err(MediaError::TooLarge(_))));
    }

    #[test]
    fn garbage_is_undecodable_and_names_are_cleaned() {
        assert!(matches!(thumbnail(b"\x89PNG\r\n\x1a\nnot really", LIMITS), Err(MediaError::Undecodable(_))));
        assert_eq!(sniff("hello, wörld".as_bytes()), "text/plain; charset=utf-8");
        assert_eq!(
            sniff(&"é".as_bytes()[..1]),
            "text/plain; charset=utf-8",
            "a character cut by the sniff window"
        );
        assert_eq!(sniff(b"\xff\xfe binary"), "application/octet-stream");
        assert_eq!(sniff(b"nul\0byte"), "application/octet-stream");
        assert_eq!(sniff(b""), "application/octet-stream");
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\x\\cat\u{0}.png"), "cat.png");
        assert_eq!(clean_name("  "), "file");
        assert!(clean_name(&"é".repeat(300)).len() <= 255);
    }
}

//! Images edgemed writes (heatmap overlays, map previews): PNG, with the record of
//! what made them in its text chunks (`edgemed` holds the provenance as JSON,
//! `Software` the short form), where image viewers and `identify -verbose` show it.

use super::provenance::Provenance;
use crate::error::{Error, Result};

/// The keyword of the text chunk holding the provenance JSON.
pub const PROVENANCE_KEYWORD: &str = "edgemed";

/// `img` as PNG bytes carrying `made_by`.
pub fn png_with_record(img: &image::RgbImage, made_by: &Provenance) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::Invalid(format!("encoding the PNG: {e}"));
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let json = serde_json::to_string(made_by).map_err(|e| Error::Invalid(e.to_string()))?;
    enc.add_itxt_chunk(PROVENANCE_KEYWORD.into(), json).map_err(err)?;
    enc.add_text_chunk("Software".into(), made_by.short()).map_err(err)?;
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(img.as_raw()).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(bytes)
}

/// The record of what made a PNG edgemed wrote (None: none in it).
pub fn png_record(bytes: &[u8]) -> Result<Option<Provenance>> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().map_err(|e| Error::Invalid(format!("not a PNG: {e}")))?;
    let info = reader.info();
    Ok(info
        .utf8_text
        .iter()
        .filter(|c| c.keyword == PROVENANCE_KEYWORD)
        .find_map(|c| c.get_text().ok())
        .and_then(|t| serde_json::from_str(&t).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_round_trip_and_the_image_too() {
        let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let made_by = Provenance {
            model: "m.onnx".into(),
            model_version: "1".into(),
            model_sha256: "ab".repeat(32),
            backend: "tract (cpu)".into(),
            settings: "stride=31".into(),
            edgemed: "0.1.0".into(),
            time: "2026-12-04T00:00:00Z".into(),
        };
        let bytes = png_with_record(&img, &made_by).unwrap();
        assert_eq!(png_record(&bytes).unwrap(), Some(made_by));
        assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), img);
        let mut plain = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::Png).unwrap();
        assert_eq!(png_record(&plain).unwrap(), None);
    }
}

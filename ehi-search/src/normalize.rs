//! String normalization for string search and `:text`: lower case, NFKD decomposition
//! (unicode-normalization), combining marks removed, so that `Ángel` and `angel` match.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The case- and accent-insensitive form of `s`.
pub(crate) fn normalize(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .collect()
}

/// The words of an already normalized string: maximal runs of alphanumeric characters.
pub(crate) fn words(normalized: &str) -> impl Iterator<Item = &str> {
    normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(normalize("Miguel Ángel"), "miguel angel");
        assert_eq!(normalize("ZOË Brontë"), "zoe bronte");
        assert_eq!(normalize("İstanbul"), "istanbul");
        assert_eq!(normalize("ﬁne"), "fine"); // NFKD compatibility ligature
        assert_eq!(normalize("Müller-Lüdenscheidt"), "muller-ludenscheidt");
    }

    #[test]
    fn splits_words() {
        let n = normalize("O'Brien-Smith  Jr.");
        assert_eq!(words(&n).collect::<Vec<_>>(), ["o", "brien", "smith", "jr"]);
    }
}

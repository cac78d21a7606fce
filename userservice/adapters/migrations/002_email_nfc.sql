-- Emails are stored in one canonical form: lower case (since 001) and now
-- Unicode NFC, so that "é" typed precomposed and "e" + U+0301 are the same
-- account (domain.CanonicalEmail). Rows written before were lower-cased by
-- Go but not normalized: normalize them here.
--
-- Two old rows may be spellings of one address (that was the bug). Only one
-- of them can take the canonical form without breaking users_email_key: the
-- one already in NFC if there is one, else the oldest. The others keep
-- their old spelling, so nothing is lost, but no longer match a login (the
-- lookup uses the canonical form): an operator merges or removes them.
UPDATE users u
SET email = normalize(u.email, NFC)
WHERE u.email IS NOT NFC NORMALIZED
  AND u.id = (
	SELECT d.id FROM users d
	WHERE lower(normalize(d.email, NFC)) = lower(normalize(u.email, NFC))
	ORDER BY (d.email IS NFC NORMALIZED) DESC, d.created_at, d.id
	LIMIT 1);

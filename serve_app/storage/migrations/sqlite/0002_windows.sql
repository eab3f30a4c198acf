-- Pairs scored per request: one per document, one per window of a chunked document.
-- Before chunking every document was one pair, so older rows scored as many as they billed.
ALTER TABLE usage_records ADD COLUMN windows INTEGER NOT NULL DEFAULT 0;
UPDATE usage_records SET windows = documents;

"""Input: read ids (CSV file or stdin) with offsets, validate, de-duplicate, plan batches."""

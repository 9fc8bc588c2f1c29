"""Other people's file formats: insightface RecordIO (.rec/.idx), verification .bin, LFW pairs,
and kface's pairs CSV."""

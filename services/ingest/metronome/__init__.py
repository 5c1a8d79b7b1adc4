"""Metronome's API shapes over our model: pure translations (our records <-> Metronome JSON), used by the
`/metronome` routes (`services.ingest.routes.metronome`). Nothing here reads or writes storage."""

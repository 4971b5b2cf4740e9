"""framecast: video prediction on Ray."""

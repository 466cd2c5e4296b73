"""Where grants and solicitation evidence live: memory, file and Redis backends."""

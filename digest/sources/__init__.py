"""Where papers come from: pure parsers (`hf_api`, `hf_html`) and the HTTP edge (`fetch`)."""

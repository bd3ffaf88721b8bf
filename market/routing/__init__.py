"""Routing: choosing which provider serves a request, by buyer preferences and live offers."""

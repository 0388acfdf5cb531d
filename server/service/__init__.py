"""The dialect-free prediction service: create / get / list / cancel, events, webhooks, files, URL checks."""

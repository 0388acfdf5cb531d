"""The job: one typed object (generation request + delivery options) that every door builds and the store persists."""

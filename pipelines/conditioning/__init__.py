"""Conditioning: the user's media -> the VACE (video, mask, reference images) triple, by named task, with the
annotators that turn source frames into control frames."""

"""What users did with the answers, and the loop back to training: the feedback journal (answers and
events) and its export as training logs."""

from monorec.feedback.export import export_logs, feedback_rows
from monorec.feedback.journal import AnswerRecord, EventRecord, FeedbackJournal

__all__ = ["AnswerRecord", "EventRecord", "FeedbackJournal", "export_logs", "feedback_rows"]

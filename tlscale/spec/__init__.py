from tlscale.spec.loading import dump_spec, json_schema, load_spec, locate_messages, spec_from_dict
from tlscale.spec.schema import JobSpec

__all__ = ["JobSpec", "dump_spec", "json_schema", "load_spec", "locate_messages", "spec_from_dict"]

# Benchmark route: the same logic as bench/kamailio/proxy.cfg, in Perl.
# bench/run.py copies this folder and replaces @UAS_URI@ with the sipp uas address.
use strict;
use warnings;

my $UAS_URI = '@UAS_URI@';

sub on_request {
    my ($req) = @_;
    $req->record_route if $req->method eq 'INVITE';
    $req->relay($UAS_URI);
}

1;

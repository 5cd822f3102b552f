# acme.example: a dial plan, in Perl.
#
# Acme's users dial short extensions, national and international numbers in
# every style ("+33 1 23 45 67 89", "0033123456789", "4021"). The rules below
# rewrite what was dialled into one canonical form with regexes - Perl's home
# ground - then route: extensions to the PBX, emergency numbers to the
# emergency gateway, everything else to the carrier, at most CALLS_PER_MINUTE
# calls a minute per caller (a counter in the host's shared store).
use strict;
use warnings;

my $PBX      = $ENV{ACME_PBX} || '127.0.0.1:5070';   # placeholders: replace with yours
my $CARRIER  = '127.0.0.1:5071';
my $EMERGENCY = '127.0.0.1:5072';
my $CALLS_PER_MINUTE = 30;

# [pattern, replacement, where]: tried in order, the first that matches wins.
# The replacement gets the pattern's first capture (or the whole number).
my @DIAL_PLAN = (
    [qr/^(?:112|15|17|18)$/,        sub { $_[0] },        $EMERGENCY],
    [qr/^([1-9]\d{3})$/,            sub { "ext-$1" },     $PBX],      # 4-digit extension
    [qr/^\+(\d{6,15})$/,            sub { "+$1" },        $CARRIER],  # already E.164
    [qr/^00(\d{6,15})$/,            sub { "+$1" },        $CARRIER],  # international prefix
    [qr/^0([1-9]\d{8})$/,           sub { "+33$1" },      $CARRIER],  # French national
);

sub canonical {
    my ($dialled) = @_;
    (my $n = $dialled) =~ s/[\s.\-()]//g;    # "+33 (1) 23.45-67" -> "+331234567"
    for my $rule (@DIAL_PLAN) {
        my ($re, $rewrite, $where) = @$rule;
        return ($rewrite->($1 // $n), $where) if $n =~ $re;
    }
    return;
}

sub on_request {
    my ($req) = @_;
    return if $req->method ne 'INVITE';      # the core proxies the rest to the request URI
    my ($number, $where) = canonical($req->ruri_user);
    unless ($number) {
        $req->reply(484, 'Address Incomplete');
        return;
    }
    my $caller = $req->from_uri;
    if ($where ne $EMERGENCY) {               # emergency calls are never limited
        my $n = $req->store->incr("acme:calls:$caller", 1, 60);
        if ($n > $CALLS_PER_MINUTE) {
            $req->log("rate limit: $caller placed $n calls this minute", 'warning');
            $req->reply(403, 'Too Many Calls');
            return;
        }
    }
    $req->vars->{number} = $number;
    $req->set_header('X-Tenant', 'acme');
    $req->record_route;
    $req->relay("sip:$number\@$where", timeout => 30);
}

# Busy or no answer on an extension: the PBX's voicemail takes the call, once.
sub on_failure {
    my ($req, $reply) = @_;
    my $number = $req->vars->{number} // '';
    return unless $number =~ /^ext-/ && !$req->vars->{voicemail};
    return unless grep { $reply->code == $_ } 408, 480, 486;
    $req->vars->{voicemail} = 1;
    $req->relay("sip:vm-$number\@$PBX");
}

1;
